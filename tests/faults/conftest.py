from collections.abc import Iterator

import pytest

from tests.faults.workload import close_all
from tests.integration.conftest import cluster, pytest_runtest_makereport
from tests.integration.netns import Network, require_netns

__all__ = ["cluster", "network", "pytest_runtest_makereport"]


@pytest.fixture(autouse=True)
def no_load_left() -> Iterator[None]:
    """Load clients of a test that failed half-way are stopped, not left running."""
    yield
    close_all()


@pytest.fixture
def network() -> Iterator[Network]:
    """Three hosts on a bridge, in network namespaces (root; CI fails without)."""
    require_netns()
    with Network(3) as net:
        yield net
