"""
python -m dcounter: the dcounter command.
"""

from dcounter.cli import main

main()
