"""
The fault suite: real twistd nodes under load while a fault is injected,
every operation recorded, and the history checked with Jepsen's counter rules
(tests/faults/history.py).  Each scenario prints one summary line.

Scenarios 4 and 5 cut hosts off in network namespaces, and 8 mounts a tmpfs:
they need root, and fail rather than skip when CI is set.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.faults.history import OK, History, increment
from tests.faults.workload import Load, finish
from tests.integration.harness import Cluster, Node, start_all, time_to_mesh, wait_for


def _mesh(cluster: Cluster, n: int = 3) -> list[Node]:
    nodes = cluster.mesh(n)
    start_all(nodes)
    time_to_mesh(nodes, 10)
    return nodes


def _increments(history: History, node: Node, n: int, in_flight: int = 8) -> int:
    """C{n} increments of 1 on C{node}, C{in_flight} at a time; return how many were acknowledged."""
    with ThreadPoolExecutor(in_flight) as pool:
        ops = list(pool.map(lambda _: history.add(increment(node.id, node.url)), range(n)))
    return sum(op.type == OK for op in ops)


def test_3_restart_from_an_old_copy_of_the_data(cluster: Cluster, tmp_path: Path) -> None:
    """
    A node stopped, its data directory copied, started again: it acknowledges
    150 increments, which reach its peers.  Then it is killed, the old copy is
    put back (a restored backup, a rolled-back snapshot) and it is started
    and takes 150 more increments at once.  Not one acknowledged increment
    may be lost (it was: the node reused its replica id, counted from its
    old slot, and its peers' larger copy of that slot swallowed the new
    increments).
    """
    a, b, c = _mesh(cluster)
    history = History()
    load = Load([a, b], tmp_path).start()
    assert _increments(history, c, 20) == 20

    c.stop()
    backup = tmp_path / "backup"
    assert c.data_dir is not None
    shutil.copytree(c.data_dir, backup)
    c.start().wait_up()
    history.started(c.id)
    assert _increments(history, c, 150) == 150
    acked = sum(op.by for op in history.adds(OK))
    for node in (a, b):
        wait_for(lambda: node.count() >= acked, 10, what=f"{node.id} to hold c's increments")

    c.kill()
    shutil.rmtree(c.data_dir)
    shutil.copytree(backup, c.data_dir)
    # "At once" made certain: its peers are paused while it starts and takes
    # the writes, so none of them can reach it before they land.
    for node in (a, b):
        node.pause()
    try:
        c.start().wait_up()
        history.started(c.id)
        assert _increments(history, c, 150) == 150
    finally:
        for node in (a, b):
            node.resume()
    healed = time.monotonic()
    load.stop(history)
    finish("scenario 3 (restart from an old copy of the data, write at once)", history, [a, b, c], healed)
