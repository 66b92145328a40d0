"""
Three real twistd nodes on loopback: concurrency, crashes and restarts.
"""

from __future__ import annotations

import itertools
import time

import pytest_twisted
import treq
from twisted.internet import defer

from tests.integration.harness import Cluster, start_all, time_to_mesh, wait_for

INCREMENTS = 3000
IN_FLIGHT = 24


def _start_mesh(cluster: Cluster, n: int = 3):
    nodes = cluster.mesh(n)
    start_all(nodes)
    time_to_mesh(nodes, 10)
    return nodes


@pytest_twisted.ensureDeferred
async def test_concurrent_increments_all_counted(cluster: Cluster) -> None:
    """
    3,000 increments, 24 in flight, round-robin over three nodes: every one
    acknowledged, and every node then reads exactly the acknowledged total.
    (The original ends 35% short.)
    """
    nodes = _start_mesh(cluster)
    targets = itertools.cycle([n.url + "/increment" for n in nodes])
    remaining = iter(range(INCREMENTS))
    acked = 0
    failed = 0

    async def worker() -> None:
        nonlocal acked, failed
        for _ in remaining:
            response = await treq.post(next(targets), timeout=30)
            await response.content()
            if response.code == 200:
                acked += 1
            else:
                failed += 1

    started = time.monotonic()
    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(IN_FLIGHT)])
    elapsed = time.monotonic() - started
    assert (acked, failed) == (INCREMENTS, 0)

    converge_start = time.monotonic()
    for node in nodes:
        wait_for(lambda: node.count() == acked, 10, what=f"{node.id} to read {acked}")
    converged = time.monotonic() - converge_start
    counts = [node.count() for node in nodes]
    print(
        f"\n{acked} increments acked of {INCREMENTS} ({IN_FLIGHT} in flight) in {elapsed:.2f}s "
        f"({acked / elapsed:.0f}/s); counts {counts}; all equal {converged:.2f}s after the last ack"
    )
    assert counts == [INCREMENTS] * 3


def test_killed_node_leaves_and_rejoins(cluster: Cluster) -> None:
    """
    SIGKILL one node: it leaves the others' /peers within 3 s.  Restarted
    with the same options it is back within 3 s, and reads the cluster's
    total without any new increment.
    """
    a, b, c = _start_mesh(cluster)
    for i, node in enumerate([a, b, c] * 10):
        assert node.post("/increment", {"by": i + 1})[0] == 200
    total = sum(range(1, 31))
    for node in (a, b, c):
        wait_for(lambda: node.count() == total, 10, what=f"{node.id} to read {total}")

    # Writes that only the survivors see while c is down.
    c.kill()
    killed = time.monotonic()
    assert a.post("/increment", {"by": 100})[0] == 200
    total += 100
    wait_for(lambda: c.id not in a.peers() and c.id not in b.peers(), 3.0, what="c to leave /peers")
    gone = time.monotonic() - killed

    c.start()
    restarted = time.monotonic()
    wait_for(lambda: c.id in a.peers() and c.id in b.peers(), 3.0 + 2.0, what="c back in /peers")
    back = time.monotonic() - restarted
    wait_for(lambda: c.count() == total, 3.0, what=f"c to read {total}")
    caught_up = time.monotonic() - restarted
    print(
        f"\nkilled node left both /peers after {gone:.2f}s; restarted node back in both /peers "
        f"{back:.2f}s after its process started, reading {c.count()} == {total} after {caught_up:.2f}s"
    )
    assert gone < 3.0
    assert back < 3.0
    assert [n.count() for n in (a, b, c)] == [total] * 3
