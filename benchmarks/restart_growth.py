"""
How the replicated state grows when one node restarts many times: every start
is a new incarnation, so each restart that writes adds one slot to each
counter it writes, until the node folds its earlier incarnations into one.

    python benchmarks/restart_growth.py [--restarts 100] [--fold-after S]

Starts three nodes with data directories (with --fold-after S, default 1);
then, --restarts times, stops the third (SIGTERM), starts it again and
increments once on it.  Then it waits until the restarted node has folded.
Prints the number of slots and the size of the whole state as it travels in
an anti-entropy sync (JSON), read from a peer's database, and the count.
With --fold-after 1000000 nothing is folded: the growth without folds.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dcounter import wire  # noqa: E402
from tests.integration.harness import Cluster, start_all, time_to_mesh, wait_for  # noqa: E402


def state_of(data_dir: Path) -> dict[str, dict[str, tuple[int, int]]]:
    db = sqlite3.connect(str(data_dir / "dcounter.sqlite3"))
    try:
        state: dict[str, dict[str, tuple[int, int]]] = {}
        for counter, replica, p, n in db.execute("SELECT counter, replica, p, n FROM slots"):
            state.setdefault(counter, {})[replica] = (p, n)
        return state
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--restarts", type=int, default=100)
    parser.add_argument("--fold-after", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), extra=["--fold-after", str(args.fold_after)])
        try:
            a, b, c = nodes = cluster.mesh(3)
            start_all(nodes)
            time_to_mesh(nodes, 10)
            started = time.monotonic()
            for _ in range(args.restarts):
                c.stop()
                c.start().wait_up()
                assert c.post("/increment")[0] == 200
            total = args.restarts
            wait_for(lambda: a.count() == total, 10, what=f"a to read {total}")
            elapsed = time.monotonic() - started
            folding = args.fold_after < 1000
            if folding:
                wait_for(lambda: not c.get("/members")[1]["fold_pending"], 60, what="c to fold")
                prefix = c.id + "/"
                wait_for(
                    lambda: (
                        sum(1 for s in state_of(a.data_dir).values() for r in s if r.startswith(prefix)) <= 2
                    ),
                    30,
                    what="a to hold c's fold",
                )
            assert a.count() == total
            a.stop()
            assert a.data_dir is not None
            state = state_of(a.data_dir)
            slots = sum(len(s) for s in state.values())
            size = len(json.dumps(wire.encode_state(state), separators=(",", ":")))
            mine = sum(1 for s in state.values() for r in s if r.startswith(c.id + "/"))
            print(
                f"after {args.restarts} restarts of one node ({elapsed:.0f}s), each with one increment: "
                f"{slots} slots in {len(state)} counter(s), {mine} of them the restarted node's; "
                f"whole state {size} bytes as JSON ({size / max(slots, 1):.0f} bytes a slot); "
                f"{'folded' if folding else 'no folds'}; count {total} on every node"
            )
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
