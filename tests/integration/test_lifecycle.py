"""
A node's stop, on real twistd processes: the last push to peers, bounded,
and the last commit before exit.
"""

from __future__ import annotations

import time

from tests.integration.harness import Cluster, start_all, time_to_mesh, wait_for


def test_sigterm_pushes_last_writes_and_says_what_it_could_not_deliver(cluster: Cluster) -> None:
    """
    SIGTERM while one peer is unresponsive (paused): the node still exits
    within its bounded wait, says in its log what that peer did not get,
    and its data holds every write it acknowledged.
    """
    a, b, c = nodes = cluster.mesh(3)
    start_all(nodes)
    time_to_mesh(nodes, 10)
    b.pause()
    try:
        for _ in range(5):
            assert a.post("/increment", {"by": 2})[0] == 200
        wait_for(lambda: c.count() == 10, 5, what="c to read 10")
        stopping = time.monotonic()
        a.stop()
        took = time.monotonic() - stopping
    finally:
        b.resume()
    log = a.log()
    print(f"\nSIGTERM with a paused peer: exited after {took:.2f}s")
    assert took < 6.0
    assert f"could not deliver 10 increments and decrements in 1 counters to {b.id}" in log
    assert "on stop, pushed this node's last writes to" in log
    a.start().wait_up()
    assert a.count() == 10
    wait_for(lambda: b.count() == 10, 10, what="b to read 10 once resumed")
