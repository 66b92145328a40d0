"""
The fault suite: real twistd nodes under load while a fault is injected,
every operation recorded, and the history checked with Jepsen's counter rules
(tests/faults/history.py).  Each scenario prints one summary line.

Scenarios 4 and 5 cut hosts off in network namespaces, and 8 mounts a tmpfs:
they need root, and fail rather than skip when CI is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.faults.history import OK, History, Op, increment
from tests.faults.workload import Load, converge, finish
from tests.integration.harness import Cluster, Node, slot_kinds, start_all, time_to_mesh, wait_for
from tests.integration.netns import Network

#: How long load runs before and after each fault, in seconds: a duration of
#: the scenario, not a stand-in for a condition.
SETTLE = 1.5
#: Bounds on waits for nodes to start and to find each other: generous, since
#: CI machines may be busy (20 s for a Python process to start was seen).
START, MESH = 60.0, 30.0


def _mesh(cluster: Cluster, n: int = 3) -> list[Node]:
    nodes = cluster.mesh(n)
    start_all(nodes, START)
    time_to_mesh(nodes, MESH)
    return nodes


def _run(seconds: float) -> None:
    """Let the load run for C{seconds} (a fault's duration: nothing to poll for)."""
    time.sleep(seconds)


def _left(node: Node, observers: list[Node], bound: float) -> float:
    started = time.monotonic()
    wait_for(
        lambda: all(node.id not in o.peers() for o in observers), bound, what=f"{node.id} to leave /peers"
    )
    return time.monotonic() - started


def _crash_and_restart(cluster: Cluster, tmp_path: Path, name: str, *, keep_data: bool) -> None:
    a, b, c = _mesh(cluster)
    history = History()
    # An increment acknowledged by default is durable on one disk; one that
    # must survive the loss of that disk asks for a peer to hold it too.
    load = Load([a, b, c], tmp_path, wait="" if keep_data else "1").start()
    _run(SETTLE)
    c.kill()
    _left(c, [a, b], MESH)
    if not keep_data:
        assert c.data_dir is not None
        shutil.rmtree(c.data_dir)
    history.started(c.id)
    c.start().wait_up(START)
    wait_for(lambda: c.id in a.peers() and c.id in b.peers(), MESH, what="c back in /peers")
    _run(SETTLE)
    load.stop(history)
    finish(name, history, [a, b, c], time.monotonic())


def test_1_kill_and_restart_with_data(cluster: Cluster, tmp_path: Path) -> None:
    """kill -9 of a node in the middle of writes on every node; restarted with its data."""
    _crash_and_restart(cluster, tmp_path, "scenario 1 (kill -9 mid-load, restart with data)", keep_data=True)


def test_2_kill_and_restart_without_data(cluster: Cluster, tmp_path: Path) -> None:
    """
    The same, restarted with an empty data directory.  Here every increment
    asks for ?wait=1: an increment acknowledged on one disk alone is lost
    with that disk if the node dies before pushing it (5 of 630 were, when
    this scenario ran without it).
    """
    _crash_and_restart(
        cluster, tmp_path, "scenario 2 (kill -9 mid-load, restart without data)", keep_data=False
    )


@pytest.mark.parametrize("copied", ["stopped", "running"])
def test_3_restart_from_an_old_copy_of_the_data(cluster: Cluster, tmp_path: Path, copied: str) -> None:
    """
    A node stopped, its data directory copied, started again: it acknowledges
    150 increments, which reach its peers.  Then it is killed, the old copy is
    put back (a restored backup, a rolled-back snapshot) and it is started
    and takes 150 more increments at once.  Not one acknowledged increment
    may be lost (it was: the node reused its replica id, counted from its
    old slot, and its peers' larger copy of that slot swallowed the new
    increments).  With C{copied="running"}, the copy is taken while the
    node runs, half-way through the 150 (a VM snapshot): it holds part of
    a slot that the node went on counting in.

    Every node folds its earlier incarnations one second after it starts
    (once it has caught up with every member): c's fold, made after it
    restarted from the old copy, must hold the peers' larger copy of the
    slot it folds, and every node must still read the same afterwards.
    """
    cluster.extra += ["--wait-timeout", "20"]  # busy machines: within the client's 30 s
    cluster.extra += ["--fold-after", "1"]
    a, b, c = _mesh(cluster)
    history = History()
    load = Load([a, b], tmp_path).start()
    assert _increments(history, c, 20) == 20

    c.stop()
    backup = tmp_path / "backup"
    assert c.data_dir is not None
    if copied == "stopped":
        shutil.copytree(c.data_dir, backup)
    history.started(c.id)
    c.start().wait_up(START)
    time_to_mesh([a, b, c], MESH)
    # Acknowledged once both peers hold them (durably): the 150 are the
    # peers' to keep, whatever becomes of c's disk.
    assert _increments(history, c, 75, wait="all") == 75
    if copied == "running":
        shutil.copytree(c.data_dir, backup)
    assert _increments(history, c, 75, wait="all") == 75

    c.kill()
    shutil.rmtree(c.data_dir)
    shutil.copytree(backup, c.data_dir)
    # "At once" made certain: its peers are paused while it starts and takes
    # the writes, so none of them can reach it before they land.
    for node in (a, b):
        node.pause()
    try:
        history.started(c.id)
        c.start().wait_up(START)
        assert _increments(history, c, 150) == 150
        # The peers stay away past c's fold_after and an anti-entropy tick
        # (every 2 s): a fold made now, of c's old copy alone, would lose
        # the 150 its peers hold.
        _run(2.5)
    finally:
        for node in (a, b):
            node.resume()
    healed = time.monotonic()
    load.stop(history)
    result = finish(
        f"scenario 3 (restart from an old copy of the data, copied {copied}, write at once)",
        history,
        [a, b, c],
        healed,
    )
    wait_for(
        lambda: not c.get("/members")[1]["fold_pending"], MESH, what="c to fold its earlier incarnations"
    )
    # c's two earlier incarnations are one fold slot, on every node's disk.
    for node in (a, b, c):
        wait_for(
            lambda node=node: slot_kinds(node, c) == ["folded", "live"],
            MESH,
            what=f"{node.id} to hold c's fold",
        )
    counts, _ = converge([a, b, c])
    assert set(counts.values()) == set(result.finals.values()), f"after c folded: {counts}"


def _hosts(cluster: Cluster, net: Network) -> list[Node]:
    ids = [f"{address}:8088" for address in net.addresses]
    nodes = [
        cluster.add(8088, host=address, prefix=net.exec_prefix(k), peers=[i for i in ids if i != ids[k]])
        for k, address in enumerate(net.addresses)
    ]
    start_all(nodes, START)
    time_to_mesh(nodes, MESH)
    return nodes


@pytest.mark.netns
def test_4_partition_with_writes_on_both_sides(network: Network, cluster: Cluster, tmp_path: Path) -> None:
    """One host cut off from the others while all three take writes, then healed."""
    a, b, c = _hosts(cluster, network)
    history = History()
    load = Load([a, b, c], tmp_path).start()
    _run(SETTLE)
    network.cut(2)
    _left(c, [a, b], MESH)
    _run(SETTLE)
    load.stop(history)
    assert any(op.node == c.id and op.type == OK and op.f == "add" for op in history.ops)
    network.heal(2)
    finish("scenario 4 (partition, writes on both sides, heal)", history, [a, b, c], time.monotonic())


@pytest.mark.netns
def test_5_flapping_partition(network: Network, cluster: Cluster, tmp_path: Path) -> None:
    """Six cuts and heals, a different host each time, while every node takes writes."""
    nodes = _hosts(cluster, network)
    history = History()
    load = Load(nodes, tmp_path).start()
    for k in range(6):
        network.cut(k % 3)
        _run(1.0)
        network.heal(k % 3)
        if k < 5:
            _run(1.0)
    load.stop(history)
    finish("scenario 5 (six cuts and heals under writes)", history, nodes, time.monotonic())


def test_6_paused_node(cluster: Cluster, tmp_path: Path) -> None:
    """SIGSTOP of a node for longer than failure detection, writes elsewhere, SIGCONT."""
    a, b, c = _mesh(cluster)
    history = History()
    load = Load([a, b, c], tmp_path).start()
    _run(SETTLE)
    c.pause()
    try:
        left = _left(c, [a, b], MESH)
        _run(SETTLE)
    finally:
        c.resume()
    wait_for(lambda: c.id in a.peers() and c.id in b.peers(), MESH, what="c back in /peers")
    load.stop(history)
    print(f"\npaused node left both /peers after {left:.2f}s")
    finish("scenario 6 (SIGSTOP past failure detection, SIGCONT)", history, [a, b, c], time.monotonic())


def test_7_stuttering_node_stays_a_peer(cluster: Cluster, tmp_path: Path) -> None:
    """
    A node stopped 0.6 s of every second for 8 s, under writes: it stays in
    every /peers throughout.
    """
    a, b, c = _mesh(cluster)
    history = History()
    load = Load([a, b, c], tmp_path).start()
    missing: list[tuple[float, str]] = []
    stuttering = threading.Event()
    stuttering.set()

    def watch() -> None:
        while stuttering.is_set():
            for observer in (a, b):
                if c.id not in observer.peers():
                    missing.append((time.monotonic(), observer.id))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(8):
            c.pause()
            _run(0.6)
            c.resume()
            _run(0.4)
    finally:
        c.resume()
        stuttering.clear()
        watcher.join()
    load.stop(history)
    assert missing == [], f"the stuttering node left /peers: {missing[:5]}"
    finish("scenario 7 (stopped 0.6 s of every second for 8 s)", history, [a, b, c], time.monotonic())


def _fill(directory: Path) -> Path:
    """Write a file in C{directory} until its file system is full."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError:
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 16] or b"\0"
    return filler


def test_8_full_disk(cluster: Cluster, tmp_path: Path) -> None:
    """
    A node's data directory on a tiny tmpfs that fills up mid-load: its writes
    answer 503 (indeterminate), nothing acknowledged is lost, and its writes
    work again once space is freed.
    """
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the full-disk scenario must run in CI, but it needs root to mount a tmpfs")
        pytest.skip("needs root to mount a tmpfs")
    nodes = cluster.mesh(3)
    a, b, c = nodes
    assert c.data_dir is not None
    c.data_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(c.data_dir)], check=True)
    try:
        start_all(nodes, START)
        time_to_mesh(nodes, MESH)
        history = History()
        load = Load(nodes, tmp_path).start()
        _run(SETTLE)
        filler = _fill(c.data_dir)
        wait_for(
            lambda: history.add(increment(c.id, c.url)).status == 503, 10, what="a write on c to answer 503"
        )
        _run(SETTLE)
        filler.unlink()
        wait_for(lambda: history.add(increment(c.id, c.url)).type == OK, 10, what="c to take writes again")
        _run(SETTLE)
        load.stop(history)
        refused = sum(op.node == c.id and op.status == 503 for op in history.ops)
        print(f"\n{refused} writes on the full node answered 503")
        finish("scenario 8 (full disk mid-load, then space freed)", history, nodes, time.monotonic())
    finally:
        c.kill()
        subprocess.run(["umount", "-l", str(c.data_dir)], check=False)


def _increments(history: History, node: Node, n: int, in_flight: int = 8, wait: str = "") -> int:
    """
    C{n} increments of 1 on C{node}, C{in_flight} at a time, each with
    C{?wait=}; return how many were acknowledged.  A long client timeout:
    these scripted writes must not turn unknown because a machine is busy.
    """

    def one(_: int) -> Op:
        return history.add(increment(node.id, node.url, timeout=30.0, wait=wait))

    with ThreadPoolExecutor(in_flight) as pool:
        ops = list(pool.map(one, range(n)))
    return sum(op.type == OK for op in ops)
