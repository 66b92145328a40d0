"""
Idempotency-Key on real nodes: a write retried any number of times, on one
node or on all of them at once, moves the counter by one write everywhere.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.integration.harness import Cluster, Node, start_all, time_to_mesh, wait_for
from tests.integration.keyed import keyed


def _converged(nodes: list[Node], value: int, bound: float) -> tuple[float, int]:
    """
    Wait until every node reads C{value}; return how long it took and the
    largest count seen meanwhile.
    """
    started = time.monotonic()
    seen = [0]

    def done() -> bool:
        counts = [n.count() for n in nodes]
        seen[0] = max(seen[0], *counts)
        return all(c == value for c in counts)

    wait_for(done, bound, what=f"every node to read {value}")
    return time.monotonic() - started, seen[0]


def test_same_key_ten_times_on_one_node_then_on_all_three_at_once(cluster: Cluster) -> None:
    nodes = cluster.mesh(3)
    start_all(nodes)
    time_to_mesh(nodes, 10)
    a = nodes[0]

    # Ten times to one node: one write, ten identical answers.
    answers = [keyed(a, "/increment", "once-on-a", {"by": 7}) for _ in range(10)]
    assert [status for status, _, _ in answers] == [200] * 10
    assert {body["count"] for _, body, _ in answers} == {7}
    assert [replayed for _, _, replayed in answers] == [None] + ["true"] * 9
    _converged(nodes, 7, 10)

    # Ten times across all three at once, a new key: every node may count it
    # before hearing of the others; the cluster still counts it once.
    with ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(lambda i: keyed(nodes[i % 3], "/increment", "once-anywhere", {"by": 5}), range(10))
        )
    assert [status for status, _, _ in answers] == [200] * 10
    counted = sum(replayed is None for _, _, replayed in answers)
    assert 1 <= counted <= 3  # at most once per node
    took, most = _converged(nodes, 12, 15)
    print(
        f"\nidempotency, 10 concurrent retries on 3 nodes: {counted} nodes counted the key, "
        f"every node read it once after {took:.2f}s, largest count read meanwhile {most} (right: 12)"
    )
    # And it stays once: a later retry anywhere is a replay that changes nothing.
    for node in nodes:
        status, body, replayed = keyed(node, "/increment", "once-anywhere", {"by": 5})
        assert (status, replayed) == (200, "true")
    time.sleep(0.5)  # a duration: nothing should happen in it
    assert [n.count() for n in nodes] == [12, 12, 12]
