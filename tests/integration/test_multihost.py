"""
Several hosts joined by a bridge, one node each, in network namespaces: the
shape of a compose network.  Root only; in CI these fail rather than skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import Cluster, Node, start_all, start_then_join, time_to_mesh, wait_for
from tests.integration.netns import Network, require_netns

pytestmark = pytest.mark.netns
HOSTS = 4
PORT = 8088
BOUND = 2.0


@pytest.fixture
def network() -> Iterator[Network]:
    require_netns()
    with Network(HOSTS) as net:
        yield net


def _node(cluster: Cluster, net: Network, k: int, *args: str) -> Node:
    return cluster.add(PORT, host=net.addresses[k], prefix=net.exec_prefix(k), args=args)


def test_broadcast_discovery_across_hosts(network: Network, tmp_path) -> None:
    """
    One node per host, no --peers, discovery by the bridge's broadcast alone:
    three started together list each other within 2 s, a fourth started
    later is listed by all and lists all within 2 s.
    """
    cluster = Cluster(tmp_path, discovery=True)
    try:
        nodes = [_node(cluster, network, k) for k in range(HOSTS)]
        t = start_then_join(nodes, BOUND)
        _, info = nodes[0].get("/discovery")
        print(
            f"\n{HOSTS} hosts on {network.prefix}.0/24: 3 answered {t.startup:.2f}s after spawn and "
            f"listed each other {t.mesh:.2f}s later; the 4th joined {t.join:.2f}s after it answered; "
            f"broadcast {info['broadcast']}"
        )
        assert info["broadcast"] == [network.broadcast]
        assert nodes[1].post("/increment", {"by": 7})[0] == 200
        for node in nodes:
            wait_for(lambda: node.count() == 7, 5, what=f"{node.id} to read 7")
    finally:
        cluster.stop()


def test_join_dns_without_broadcast(network: Network, tmp_path) -> None:
    """
    With discovery off, --join-dns on a name that resolves to every host
    (each host's /etc/hosts) forms the cluster.
    """
    entries = [(address, "dcounter-nodes") for address in network.addresses]
    for k in range(HOSTS):
        network.set_hosts_file(k, entries)
    cluster = Cluster(tmp_path, discovery=False)
    try:
        nodes = [_node(cluster, network, k, "--join-dns", "dcounter-nodes") for k in range(HOSTS)]
        start_all(nodes)
        print(f"\n{HOSTS} hosts joined through DNS {time_to_mesh(nodes, 5 + BOUND):.2f}s after answering")
        assert nodes[0].get("/discovery")[1]["enabled"] is False
    finally:
        cluster.stop()
