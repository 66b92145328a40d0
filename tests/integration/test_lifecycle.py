"""
A node's stop, on real twistd processes: the last push to peers, bounded,
and the last commit before exit.
"""

from __future__ import annotations

import signal
import time

from tests.integration.harness import Cluster, slot_kinds, start_all, time_to_mesh, wait_for


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


def test_whole_cluster_restarts_at_once(cluster: Cluster) -> None:
    """
    Every node stopped together and started together (each a new
    incarnation): every count is back, and writes go on from there; then
    each node folds its earlier incarnation, and no count changes.
    """
    cluster.extra += ["--fold-after", "0.5"]
    nodes = cluster.mesh(3)
    start_all(nodes)
    time_to_mesh(nodes, 10)
    for k, node in enumerate(nodes):
        assert node.post("/increment", {"by": k + 1})[0] == 200
    for node in nodes:
        wait_for(lambda: node.count() == 6, 5, what=f"{node.id} to read 6")
    before = {node.get("/health")[1]["incarnation"] for node in nodes}
    processes = [node.process for node in nodes]
    for process in processes:
        assert process is not None
        process.terminate()
    for process in processes:
        assert process is not None
        # twistd ends by re-raising the signal once shut down.
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)
    start_all(nodes)
    time_to_mesh(nodes, 10)
    assert [node.count() for node in nodes] == [6, 6, 6]
    assert not before & {node.get("/health")[1]["incarnation"] for node in nodes}
    assert nodes[0].post("/increment")[0] == 200
    for node in nodes:
        wait_for(lambda: node.count() == 7, 5, what=f"{node.id} to read 7")
    # Each node's first incarnation is a fold slot, on every node's disk;
    # the first node's second one took the last write.
    expected = [["folded", "live"], ["folded"], ["folded"]]
    for node in nodes:
        wait_for(
            lambda: [slot_kinds(node, owner) for owner in nodes] == expected,
            20,
            what=f"{node.id} to hold the folds",
        )
    assert [node.count() for node in nodes] == [7, 7, 7]
    assert not any(node.get("/members")[1]["fold_pending"] for node in nodes)
