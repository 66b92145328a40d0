"""
A cluster with a key: nodes that hold it mesh and replicate; keys rotate
under load with nothing lost and no peer leaving.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from dcounter.keyring import key_id
from tests.integration.harness import Cluster, all_listed, start_all, wait_for

KEY_A = "key-A-0123456789abcdef"
KEY_B = "key-B-fedcba9876543210"


def _write_keys(path: Path, *keys: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(k + "\n" for k in keys))
    tmp.replace(path)


def test_key_rotation_under_load(cluster: Cluster, tmp_path: Path) -> None:
    """
    Three nodes move from key A to key B (install B, sign with B, remove A)
    by rewriting each node's --secret-file and sending SIGHUP, while four
    clients increment without pause: every acknowledged increment is counted
    on every node, and no node's /peers ever loses a peer.
    """
    files = [tmp_path / f"keys-{i}" for i in range(3)]
    for f in files:
        _write_keys(f, KEY_A)
    nodes = cluster.mesh(3)
    for node, f in zip(nodes, files, strict=True):
        node.args += ["--secret-file", str(f)]
    start_all(nodes)
    wait_for(lambda: all_listed(nodes), 10, what="the keyed cluster to mesh")

    acked = [0] * 4
    stop = threading.Event()
    shrunk: list[tuple[str, set[str]]] = []

    def client(k: int) -> None:
        node = nodes[k % 3]
        while not stop.is_set():
            status, _ = node.post("/increment")
            if status == 200:
                acked[k] += 1

    def watch() -> None:
        ids = {n.id for n in nodes}
        while not stop.is_set():
            for n in nodes:
                peers = n.peers()
                if peers != ids - {n.id}:
                    shrunk.append((n.id, peers))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)] + [
        threading.Thread(target=watch)
    ]
    for t in threads:
        t.start()
    steps = [(KEY_A, KEY_B), (KEY_B, KEY_A), (KEY_B,)]
    try:
        for keys in steps:
            time.sleep(1.0)  # load runs between steps
            for node, f in zip(nodes, files, strict=True):
                _write_keys(f, *keys)
                assert node.process is not None
                node.process.send_signal(signal.SIGHUP)
            wanted = [key_id(k.encode()) for k in keys]
            for node in nodes:
                wait_for(
                    lambda: node.get("/discovery")[1]["auth"]["keys"] == wanted,
                    10,
                    what=f"{node.id} to reload its keys",
                )
            print(
                f"\nall 3 nodes hold {len(keys)} key(s), signing with {wanted[0]}; acked so far {sum(acked)}"
            )
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    total = sum(acked)
    wait_for(lambda: all(n.count() == total for n in nodes), 15, what=f"every node to read {total}")
    drops = [n.get("/discovery")[1]["auth"]["dropped"] for n in nodes]
    print(
        f"rotation A -> B under load: {total} increments acknowledged, every node reads {total}; "
        f"peer-list shrink events seen: {len(shrunk)}; drops by reason: {drops}"
    )
    assert shrunk == []
    assert all(n.get("/health")[1]["auth"] == "on" for n in nodes)


def test_keyed_nodes_find_each_other_by_broadcast_and_a_restarted_one_rejoins(tmp_path: Path) -> None:
    """
    With a key and no --peers, three nodes mesh by signed announcements; one
    killed with -9 and restarted with its data (a new boot: its sequence
    numbers start again at 1) is taken back, and every increment counts.
    """
    cluster = Cluster(tmp_path, discovery=True, extra=["--secret", KEY_A])
    try:
        nodes = [cluster.add() for _ in range(3)]
        start_all(nodes)
        wait_for(lambda: all_listed(nodes), 10, what="keyed nodes to find each other by broadcast")
        for node in nodes:
            assert node.post("/increment", {"by": 5})[0] == 200
        victim = nodes[2]
        victim.kill(signal.SIGKILL)
        assert nodes[0].post("/increment", {"by": 100})[0] == 200
        victim.start().wait_up()
        started = time.monotonic()
        wait_for(lambda: all_listed(nodes), 10, what="the restarted node to be listed again")
        assert victim.post("/increment")[0] == 200
        wait_for(lambda: all(n.count() == 116 for n in nodes), 10, what="every node to read 116")
        rejoined = time.monotonic() - started
        print(f"\nkeyed node restarted with its data: all list all {rejoined:.2f}s after it answered")
        drops = [n.get("/discovery")[1]["auth"]["dropped"] for n in nodes]
        print(f"drops by reason: {drops}")
        assert all(d["http"].get("replayed", 0) == 0 for d in drops)
    finally:
        cluster.stop()
