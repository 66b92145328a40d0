"""
dcounter: a peer-to-peer distributed counter daemon on Twisted.
"""

__version__ = "0.1.0"
