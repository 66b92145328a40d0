"""
How the replicated state grows when one node restarts many times: every start
is a new incarnation, so each restart that writes adds one slot to each
counter it writes.

    python benchmarks/restart_growth.py [--restarts 100]

Starts three nodes with data directories; then, --restarts times, stops the
third (SIGTERM), starts it again and increments once on it.  Prints the
number of slots and the size of the whole state as it travels in an
anti-entropy sync (JSON), read from a peer's database.
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
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
            a.stop()
            assert a.data_dir is not None
            state = state_of(a.data_dir)
            slots = sum(len(s) for s in state.values())
            size = len(json.dumps(wire.encode_state(state), separators=(",", ":")))
            mine = sum(1 for s in state.values() for r in s if r.startswith(c.id + "/"))
            print(
                f"after {args.restarts} restarts of one node ({elapsed:.0f}s), each with one increment: "
                f"{slots} slots in {len(state)} counter(s), {mine} of them the restarted node's; "
                f"whole state {size} bytes as JSON ({size / max(slots, 1):.0f} bytes a slot)"
            )
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
