"""
Benchmark 1: one node on one core, wrk on the other.

    python benchmarks/hotpath.py [--quick] [--seconds S] [--rounds N]

Keep-alive POST /increment (wrk -t2 -c32) against, in turn: a bare
twisted.web resource answering a fixed JSON body, a bare Klein route,
dcounter in memory, and dcounter with a data directory (SQLite, group
commit).  Every server is pinned to core 0 and wrk to core 1.  Each server
first gets one second of load that is not counted (connections, caches);
then the rounds are interleaved so that a burst of load from elsewhere hits
all four alike.  Each rate is the median of its rounds; each ratio to the
bare resource is the median of the rounds' own ratios (the servers of a
round measured back to back), so that the machine slowing down or speeding
up between rounds does not move it.  Prints increments/s, the ratios (goals:
>= 0.85 in memory, >= 0.75 with data) and each round's ratios; each
server's CPU per increment, and for dcounter the part of it its commit
thread used and the context switches of all its threads per increment;
with a data directory, the increments that shared each commit.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    Client,
    Cluster,
    free_port,
    metric,
    pinned,
    process_cpu_seconds,
    side_threads,
    wait_for,
    wrk,
)

FLOOR = str(ROOT / "benchmarks" / "floor.py")
#: The store's commits so far (the count of its commit-duration histogram).
COMMITS = "dcounter_store_commit_duration_seconds_count"


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


def run(quick: bool, seconds: float | None = None, rounds: int | None = None) -> dict[str, Any]:
    seconds = seconds or 4.0
    rounds = rounds or (1 if quick else 7)
    results: dict[str, list[float]] = {"twisted.web": [], "klein": [], "memory": [], "data-dir": []}
    cpu: dict[str, list[float]] = {name: [] for name in results}  # server CPU us per increment
    side: dict[str, list[float]] = {"memory": [], "data-dir": []}  # other threads' CPU us per increment
    switches: dict[str, list[float]] = {"memory": [], "data-dir": []}  # per increment
    group: list[float] = []  # increments per commit, with a data directory
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        memory = cluster.add(in_memory=True, prefix=pinned("0"))
        data = cluster.add(prefix=pinned("0"))
        floors = {kind: floor_server(kind) for kind in ("twisted", "klein")}
        try:
            for node in (memory, data):
                node.start().wait_up(60)
            targets = {
                "twisted.web": (floors["twisted"][0].pid, floors["twisted"][1]),
                "klein": (floors["klein"][0].pid, floors["klein"][1]),
                "memory": (memory.process.pid, memory.port),
                "data-dir": (data.process.pid, data.port),
            }
            for _, port in targets.values():
                wrk(f"http://127.0.0.1:{port}/increment", 1)  # warm-up, not counted
            for _ in range(rounds):
                for name, (pid, port) in targets.items():
                    commits = metric(port, COMMITS) if name == "data-dir" else 0.0
                    before, side_before = process_cpu_seconds([pid]), side_threads(pid)
                    rate = wrk(f"http://127.0.0.1:{port}/increment", seconds)
                    results[name].append(rate)
                    done = rate * seconds
                    cpu[name].append(1e6 * (process_cpu_seconds([pid]) - before) / done)
                    if name in side:
                        side_after = side_threads(pid)
                        side[name].append(1e6 * (side_after[0] - side_before[0]) / done)
                        switches[name].append((side_after[1] - side_before[1]) / done)
                    if name == "data-dir":
                        committed = metric(port, COMMITS) - commits
                        if committed <= 0:
                            raise RuntimeError(f"no commit counted in {COMMITS} under load: renamed?")
                        group.append(done / committed)
                    time.sleep(0.5)  # let the server's queues drain between runs
        finally:
            cluster.stop()
            for process, _ in floors.values():
                process.terminate()
                process.wait()
    figures: dict[str, Any] = {name: statistics.median(values) for name, values in results.items()}
    for name, values in cpu.items():
        figures[f"{name} server CPU us per increment"] = statistics.median(values)
    for name in side:
        figures[f"{name}: CPU us per increment outside the reactor's thread"] = statistics.median(side[name])
        figures[f"{name}: context switches per increment"] = f"{statistics.median(switches[name]):.2f}"
    figures["data-dir: increments per commit"] = f"{statistics.median(group):.1f}"
    bare = results["twisted.web"]
    for name in ("klein", "memory", "data-dir"):
        ratios = [ours / floor for ours, floor in zip(results[name], bare, strict=True)]
        figures[f"{name}/twisted.web"] = statistics.median(ratios)
        if name != "klein":
            figures[f"{name}/twisted.web, each round"] = " ".join(f"{r:.2f}" for r in ratios)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--seconds", type=float, help="seconds of wrk per server and round (4)")
    parser.add_argument("--rounds", type=int, help="rounds (7; --quick: 1)")
    args = parser.parse_args()
    figures = run(args.quick, args.seconds, args.rounds)
    for name, value in figures.items():
        if isinstance(value, str):
            print(f"{name}: {value}")
        elif "CPU" in name:
            print(f"{name}: {value:.0f}")
        else:
            print(f"{name}: {value:.2f}" if "/" in name else f"{name}: {value:.0f} increments/s")


if __name__ == "__main__":
    main()
