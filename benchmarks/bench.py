"""
The benchmark suite (`make bench`): runs the four benchmarks on loopback,
prints one table, and writes it with the machine, the commit, the command
and the load average to benchmarks/results/.

    python benchmarks/bench.py [--quick] [--only hotpath,replication,scale,memory]
                               [--sizes 10,50,100] [--out DIR]

1. hotpath.py: one node on one core, wrk on the other, beside a bare
   twisted.web resource and a bare Klein route.
2. replication.py: a three-node cluster: increments/s while replicating,
   replication lag at rest (beside the floor of its polls) and at half the
   maximum rate.
3. scale.py: 10, 50 and 100 nodes (--sizes to choose), packed 10 nodes
   to a process (benchmarks/multinode.py).
4. memory.py: RSS at rest and after 1,000,000 increments over 10,000
   counters; idle anti-entropy bytes per round.

The machine's other load skews every figure: the load average before and
after each benchmark is in the results file, so a figure taken on a busy
machine can be told from one taken on a quiet one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hotpath
import memory
import replication
import scale
from common import ROOT

#: figure -> (goal as text, test of the value)
GOALS: dict[str, tuple[str, Any]] = {
    "memory/twisted.web": (">= 0.85", lambda v: v >= 0.85),
    "data-dir/twisted.web": (">= 0.75", lambda v: v >= 0.75),
    "lag at rest p50 ms": ("< 2", lambda v: v < 2),
    "lag at rest p99 ms": ("< 20", lambda v: v < 20),
    "lag at half rate p99 ms": ("< 100", lambda v: v < 100),
    "RSS at rest MB (max of 3)": ("< 60", lambda v: v < 60),
    "idle anti-entropy bytes per round": ("< 10,000", lambda v: v < 10_000),
    # Issue 9's goals for 100 nodes, held at every size.
    "full mesh s": ("< 15", lambda v: v < 15),
    "false suspicions": ("0", lambda v: v == 0),
    "increment on every node s": ("< 2", lambda v: v < 2),
    "idle CPU per node / at 10 nodes": ("<= 1.5", lambda v: v <= 1.5),
}


def sh(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    except OSError:
        return "?"
    return done.stdout.strip() or "?"


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) // 1024} MiB"
    except (OSError, ValueError, IndexError):
        pass
    return [
        f"- host: {platform.node()}, {platform.platform()}",
        f"- CPU: {cpu}, {os.cpu_count()} cores; memory {mem}",
        f"- Python {platform.python_version()}; {sh('wrk', '--version').splitlines()[0]}",
    ]


def fmt(value: Any, figure: str = "") -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value != value:
        return "n/a"
    if "CPU" in figure and " us " not in figure and abs(value) < 1:  # CPU-seconds a second
        return f"{value:.4f}"
    if "MB" in figure or " ms" in figure:
        return f"{value:.1f}"
    if abs(value) < 10 and not float(value).is_integer():
        return f"{value:.2f}"
    return f"{value:,.0f}"


def run_one(name: str, quick: bool, sizes: list[int] | None, rows: list[tuple[str, str, Any]]) -> None:
    """
    Run benchmark C{name}; add its figures to C{rows}.
    """
    if name == "hotpath":
        for figure, value in hotpath.run(quick).items():
            unit = " increments/s" if figure in ("twisted.web", "klein", "memory", "data-dir") else ""
            rows.append(("1 one node, one core", figure + unit, value))
    elif name == "replication":
        for figure, value in replication.run(quick).items():
            rows.append(("2 three nodes", figure, value))
    elif name == "scale":
        for result in scale.run(quick, sizes):
            n = result.pop("nodes")
            for figure, value in result.items():
                rows.append((f"3 scale, {n} nodes", figure, value))
    elif name == "memory":
        for figure, value in memory.run(quick).items():
            rows.append(("4 memory", figure, value))
    else:
        raise SystemExit(f"unknown benchmark {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="every benchmark in its quick mode (~3 min)")
    parser.add_argument("--only", help="comma-separated: hotpath, replication, scale, memory")
    parser.add_argument("--sizes", help="cluster sizes for the scale benchmark [10,50,100]")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where to write results")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else ["hotpath", "replication", "scale", "memory"]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None

    rows: list[tuple[str, str, Any]] = []  # benchmark, figure, value
    loads: list[str] = []
    started = time.monotonic()
    for name in chosen:
        before = load()
        print(f"== {name} (load average {before})", flush=True)
        try:
            run_one(name, args.quick, sizes, rows)
        except Exception as e:  # one failing (a saturated machine) leaves the others
            rows.append((f"{name}", "failed", f"{type(e).__name__}: {str(e)[:200]}"))
        loads.append(f"- {name}: load average {before} before, {load()} after")
        for row in rows:
            if row[0][0] == rows[-1][0][0]:
                print(f"  {row[1]}: {fmt(row[2], row[1])}", flush=True)

    table = ["| benchmark | figure | value | goal |", "|---|---|---|---|"]
    for bench, figure, value in rows:
        goal = ""
        if figure.split(" increments/s")[0] in GOALS and not isinstance(value, str):
            text, test = GOALS[figure.split(" increments/s")[0]]
            goal = f"{text}: {'met' if test(value) else 'NOT met'}"
        table.append(f"| {bench} | {figure} | {fmt(value, figure)} | {goal} |")
    print()
    print("\n".join(table))

    now = datetime.datetime.now(datetime.timezone.utc)
    commit = sh("git", "rev-parse", "HEAD")
    dirty = " (with uncommitted changes)" if sh("git", "status", "--porcelain") != "?" else ""
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    lines = [
        f"# dcounter benchmarks, {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"- commit: {commit}{dirty}",
        f"- command: `{command}`{' (quick mode)' if args.quick else ''}",
        f"- took {time.monotonic() - started:.0f} s",
        *machine(),
        "- load (other work on the machine skews every figure):",
        *[f"  {line}" for line in loads],
        "",
        *table,
        "",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{now:%Y%m%d-%H%M}-{commit[:8]}{'-quick' if args.quick else ''}.md"
    path.write_text("\n".join(lines))
    print(f"\nwritten to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
