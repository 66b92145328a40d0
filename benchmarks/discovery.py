"""
How long N nodes on one host, started together with no --peers, take until
every node lists every other (UDP broadcast discovery on loopback).

    python benchmarks/discovery.py [--nodes 20] [--runs 3]

Prints, per run: seconds from spawning the processes until all answer
/health, from then until every /peers is complete, and the CPU the idle
cluster then uses (health probes and anti-entropy).  Python start-up of
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

from tests.integration.harness import (  # noqa: E402
    Cluster,
    free_ports,
    process_cpu_seconds,
    start_all,
    time_to_mesh,
)


def one_run(n: int, idle: float) -> tuple[float, float, float]:
    """
    Seconds from spawn until all answer, from then until the full mesh, and
    the cluster's CPU-seconds per second over C{idle} seconds afterwards.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), discovery=True)
        try:
            nodes = [cluster.add(p, in_memory=True) for p in free_ports(n)]
            spawned = time.monotonic()
            up = start_all(nodes, timeout=120)
            mesh = time_to_mesh(nodes, 120, interval=0.01)
            pids = [node.process.pid for node in nodes if node.process is not None]
            before, started = process_cpu_seconds(pids), time.monotonic()
            time.sleep(idle)  # measuring a duration of idling: nothing to poll for
            load = (process_cpu_seconds(pids) - before) / (time.monotonic() - started)
            return up - spawned, mesh, load
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds to measure idle CPU over")
    args = parser.parse_args()
    meshes = []
    for run in range(1, args.runs + 1):
        startup, mesh, load = one_run(args.nodes, args.idle)
        meshes.append(mesh)
        print(
            f"run {run}: {args.nodes} nodes answered /health {startup:.2f}s after spawn; "
            f"all listed all {mesh:.2f}s later ({startup + mesh:.2f}s from spawn); "
            f"idle cluster then used {load:.2f} CPU-seconds per second",
            flush=True,
        )
    print(f"median time to full mesh after all answered: {statistics.median(meshes):.2f}s")


if __name__ == "__main__":
    main()
