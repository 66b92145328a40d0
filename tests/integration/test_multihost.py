"""
Several hosts joined by a bridge, one node each, in network namespaces: the
shape of a compose network.  Root only; in CI these fail rather than skip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.harness import Cluster, Node, wait_for
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


def _all_listed(nodes: list[Node]) -> bool:
    ids = {n.id for n in nodes}
    return all(n.peers() == ids - {n.id} for n in nodes)


def test_broadcast_discovery_across_hosts(network: Network, tmp_path) -> None:
    """
    One node per host, no --peers, discovery by the bridge's broadcast alone:
    three started together list each other within 2 s, a fourth started
    later is listed by all and lists all within 2 s.
    """
    cluster = Cluster(tmp_path, discovery=True)
    try:
        nodes = [_node(cluster, network, k) for k in range(HOSTS)]
        first, late = nodes[:3], nodes[3]
        for node in first:
            node.start()
        for node in first:
            node.wait_up()
        up = time.monotonic()
        wait_for(lambda: _all_listed(first), BOUND, what="3 hosts to list each other")
        meshed = time.monotonic()
        late.start().wait_up()
        late_up = time.monotonic()
        wait_for(lambda: _all_listed(nodes), BOUND, what="the 4th host to join")
        joined = time.monotonic()
        _, info = nodes[0].get("/discovery")
        print(
            f"\n{HOSTS} hosts on {network.prefix}.0/24: 3 listed each other {meshed - up:.2f}s after "
            f"answering; the 4th joined in {joined - late_up:.2f}s; broadcast {info['broadcast']}"
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
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_up()
        up = time.monotonic()
        wait_for(lambda: _all_listed(nodes), 5 + BOUND, what="the DNS-joined cluster to form")
        print(f"\n{HOSTS} hosts joined through DNS {time.monotonic() - up:.2f}s after answering")
        assert nodes[0].get("/discovery")[1]["enabled"] is False
    finally:
        cluster.stop()
