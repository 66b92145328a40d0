from tests.integration.conftest import cluster, pytest_runtest_makereport

__all__ = ["cluster", "pytest_runtest_makereport"]
