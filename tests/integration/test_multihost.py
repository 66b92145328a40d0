"""
Several hosts joined by a bridge, one node each, in network namespaces: the
shape of a compose network.  Root only; in CI these fail rather than skip.
"""

from __future__ import annotations

import time
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


def test_partition_heals_and_converges(network: Network, tmp_path) -> None:
    """
    Cut one host off (its link down): both sides keep taking increments and
    drop each other from /peers; once the link is back, the host is re-admitted
    and every node reads every increment.  (The original lost all 200 of 200
    increments made on the cut side.)
    """
    cluster = Cluster(tmp_path, discovery=True)
    try:
        nodes = [_node(cluster, network, k) for k in range(3)]
        a, b, c = nodes
        start_all(nodes)
        time_to_mesh(nodes, BOUND)

        network.cut(2)
        cut = time.monotonic()
        # Two probe timeouts (2 s each) after a probe round: about 4 to 6 s.
        wait_for(lambda: c.id not in a.peers() and c.id not in b.peers(), 8, what="c to leave /peers")
        left = time.monotonic() - cut
        for _ in range(20):
            assert a.post("/increment")[0] == 200
        # c is cut off from the test too: ask it from inside its own host.
        for _ in range(10):
            assert c.from_inside("POST", "/increment", {"by": 2})[0] == 200
        wait_for(lambda: c.from_inside("GET", "/peers")[1] == [], 8, what="c to drop both peers")
        assert c.from_inside("GET", "/count")[1]["count"] == 20
        assert a.count() == b.count() == 20

        network.heal(2)
        healed = time.monotonic()
        for node in nodes:
            wait_for(lambda: node.count() == 40, 10, what=f"{node.id} to read 40")
        converged = time.monotonic() - healed
        time_to_mesh(nodes, 5)
        print(
            f"\nthe cut host left both /peers {left:.2f}s after its link went down; after the "
            f"partition healed, all 3 hosts read 40 within {converged:.2f}s"
        )
    finally:
        cluster.stop()
