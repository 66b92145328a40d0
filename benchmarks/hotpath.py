"""
Benchmark 1: one node on one core, wrk on the other.

    python benchmarks/hotpath.py [--quick] [--seconds S] [--rounds N]

Keep-alive POST /increment (wrk -t2 -c32) against, in turn: a bare
twisted.web resource answering a fixed JSON body, a bare Klein route,
dcounter in memory, and dcounter with a data directory (SQLite, group
commit).  Every server is pinned to core 0 and wrk to core 1; the rounds are
interleaved so that a burst of load from elsewhere hits all four alike, and
each figure is the median of its rounds.  Prints increments/s and the
ratios to the bare resource (goals: >= 0.85 in memory, >= 0.75 with data).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Client, Cluster, free_port, pinned, wait_for, wrk

FLOOR = str(ROOT / "benchmarks" / "floor.py")


def floor_server(kind: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen([*pinned("0"), sys.executable, FLOOR, kind, str(port)])

    def up() -> bool:
        try:
            Client(port).call("POST", "/increment")
            return True
        except OSError:
            return False

    wait_for(up, 15, what=f"the {kind} floor server")
    return process, port


def run(quick: bool, seconds: float | None = None, rounds: int | None = None) -> dict[str, float]:
    seconds = seconds or (4.0 if quick else 10.0)
    rounds = rounds or (1 if quick else 3)
    results: dict[str, list[float]] = {"twisted.web": [], "klein": [], "memory": [], "data-dir": []}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        memory = cluster.add(in_memory=True, prefix=pinned("0"))
        data = cluster.add(prefix=pinned("0"))
        floors = {kind: floor_server(kind) for kind in ("twisted", "klein")}
        try:
            for node in (memory, data):
                node.start().wait_up(60)
            targets = {
                "twisted.web": floors["twisted"][1],
                "klein": floors["klein"][1],
                "memory": memory.port,
                "data-dir": data.port,
            }
            for _ in range(rounds):
                for name, port in targets.items():
                    results[name].append(wrk(f"http://127.0.0.1:{port}/increment", seconds))
                    time.sleep(0.5)  # let the server's queues drain between runs
        finally:
            cluster.stop()
            for process, _ in floors.values():
                process.terminate()
                process.wait()
    medians = {name: statistics.median(values) for name, values in results.items()}
    floor = medians["twisted.web"]
    for name in list(medians):
        if name != "twisted.web":
            medians[f"{name}/twisted.web"] = medians[name] / floor
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--seconds", type=float, help="seconds of wrk per server and round")
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    figures = run(args.quick, args.seconds, args.rounds)
    for name, value in figures.items():
        print(f"{name}: {value:.2f}" if "/" in name else f"{name}: {value:.0f} increments/s")


if __name__ == "__main__":
    main()
