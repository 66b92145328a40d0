"""
How long N nodes on one host, started together with no --peers, take until
every node lists every other (UDP broadcast discovery on loopback).

    python benchmarks/discovery.py [--nodes 20] [--runs 3]

Prints, per run: seconds from spawning the processes until all answer
/health, and from then until every /peers is complete.  Python start-up of
N processes on a small machine dominates the first figure; the second is
discovery's own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import Cluster, free_ports, start_all, time_to_mesh  # noqa: E402


def one_run(n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), discovery=True)
        try:
            nodes = [cluster.add(p, in_memory=True) for p in free_ports(n)]
            spawned = time.monotonic()
            up = start_all(nodes, timeout=120)
            return up - spawned, time_to_mesh(nodes, 120, interval=0.01)
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    meshes = []
    for run in range(1, args.runs + 1):
        startup, mesh = one_run(args.nodes)
        meshes.append(mesh)
        print(
            f"run {run}: {args.nodes} nodes answered /health {startup:.2f}s after spawn; "
            f"all listed all {mesh:.2f}s later ({startup + mesh:.2f}s from spawn)",
            flush=True,
        )
    print(f"median time to full mesh after all answered: {statistics.median(meshes):.2f}s")


if __name__ == "__main__":
    main()
