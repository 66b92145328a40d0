"""
Retried keyed writes under faults, on real twistd nodes: a node killed (-9)
between committing a keyed write and answering it, and a partition with
the same key accepted on both sides.  Each prints one summary line.

The partition needs root (network namespaces) and fails rather than skips
when CI is set.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error

import pytest

from dcounter.tap import FAULT_CRASH_ENV
from tests.integration.harness import Cluster, Node, free_ports, start_all, time_to_mesh, wait_for
from tests.integration.keyed import keyed, keyed_from_inside
from tests.integration.netns import Network


def test_killed_after_commit_before_answer_then_retried_elsewhere(cluster: Cluster) -> None:
    """
    Node a commits a keyed write and dies (SIGKILL, from the fault-testing
    hook) before it answers or replicates it; the client retries on b,
    which counts it; a restarts with its data.  Every node counts it once.
    """
    ports = free_ports(3)
    ids = [f"127.0.0.1:{p}" for p in ports]
    crashing = {**os.environ, FAULT_CRASH_ENV: "1"}
    a, b, c = (
        cluster.add(p, peers=[i for i in ids if i != ids[k]], env=crashing if k == 0 else None)
        for k, p in enumerate(ports)
    )
    nodes = [a, b, c]
    start_all(nodes)
    time_to_mesh(nodes, 10)

    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        keyed(a, "/increment", "pay-42", {"by": 9})
    assert a.process is not None
    assert a.process.wait(timeout=10) == -9  # killed, not answered
    # b and c never heard of it: the client's retry on b counts it.
    assert (b.count(), c.count()) == (0, 0)
    status, body, replayed = keyed(b, "/increment", "pay-42", {"by": 9})
    assert (status, body["count"], replayed) == (200, 9, None)

    a.env = None  # restarted as a plain node, with its data (and its copy of the key)
    restarted = time.monotonic()
    a.start().wait_up()
    most = [0]

    def met() -> bool:
        counts = [n.count() for n in nodes]
        most[0] = max(most[0], *counts)
        return a.id in b.peers() and a.id in c.peers() and {b.id, c.id} <= a.peers() and counts == [9, 9, 9]

    wait_for(met, 20, what="a to meet b and c again, every node reading 9")
    took = time.monotonic() - restarted
    # Two anti-entropy rounds: a's and b's entries meet, a's replica (the
    # loser or the winner) settles; every read meanwhile must say 9.
    while time.monotonic() - restarted < took + 4.0:
        most[0] = max(most[0], *(n.count() for n in nodes))
        time.sleep(0.02)
    print(
        f"\nidempotency fault (kill -9 after commit, retry on another node): a met its peers {took:.2f}s "
        f"after its restart began; all reads until {took + 4.0:.1f}s was <= {most[0]} (right: 9)"
    )
    assert most[0] == 9
    for node in nodes:
        status, body, replayed = keyed(node, "/increment", "pay-42", {"by": 9})
        assert (status, body["count"], replayed) == (200, 9, "true")
    assert [n.count() for n in nodes] == [9, 9, 9]


def _hosts(cluster: Cluster, net: Network) -> list[Node]:
    ids = [f"{address}:8088" for address in net.addresses]
    nodes = [
        cluster.add(8088, host=address, prefix=net.exec_prefix(k), peers=[i for i in ids if i != ids[k]])
        for k, address in enumerate(net.addresses)
    ]
    start_all(nodes)
    time_to_mesh(nodes, 10)
    return nodes


@pytest.mark.netns
def test_key_accepted_on_both_sides_of_a_partition(network: Network, cluster: Cluster) -> None:
    """
    Host c is cut off; the same keyed write is accepted by a (majority side)
    and by c (asked from inside its namespace).  After healing every node
    counts it once; the time until then is the over-count window.
    """
    a, b, c = _hosts(cluster, network)
    network.cut(2)
    wait_for(lambda: c.id not in a.peers() and c.id not in b.peers(), 10, what="c to leave a's and b's peers")
    assert keyed(a, "/increment", "vote-7", {"by": 4})[:3:2] == (200, None)
    status, body, replayed = keyed_from_inside(c, "/increment", "vote-7", {"by": 4})
    assert (status, body["count"], replayed) == (200, 4, None)
    wait_for(lambda: b.count() == 4, 10, what="b to hold a's write")
    network.heal(2)
    healed = time.monotonic()
    most = [0]

    def met() -> bool:
        counts = [n.count() for n in (a, b, c)]
        most[0] = max(most[0], *counts)
        return c.id in a.peers() and c.id in b.peers() and a.id in c.peers() and counts == [4, 4, 4]

    wait_for(met, 20, what="c to meet a and b again, every node reading 4")
    took = time.monotonic() - healed
    # Two anti-entropy rounds: both entries and the loser's settlement travel
    # meanwhile; every read in them must say 4.
    while time.monotonic() - healed < took + 4.0:
        counts = [n.count() for n in (a, b, c)]
        most[0] = max(most[0], *counts)
        time.sleep(0.02)
    print(
        f"\nidempotency partition (one key on both sides): the sides met {took:.2f}s after healing; "
        f"every read of every node from healing to {took + 4.0:.1f}s after was <= {most[0]} (right: 4)"
    )
    assert most[0] == 4
    assert [n.count() for n in (a, b, c)] == [4, 4, 4]
