"""
False suspicions of the failure detector while one node of three is
saturated with HTTP requests, and how fast a killed node still leaves /peers.

    python benchmarks/false_suspicions.py [--duration 20] [--connections 2000] [--runs 2]
                                          [--node-args "--probe-timeout 0.75 ..."]
                                          [--method POST] [--path /increment]

Needs wrk (apt-get install wrk).  Starts three in-memory nodes that know each
other, runs `wrk` against the first for --duration seconds,
(POST /increment by default: each one also pushed to both peers)
and counts every change of a peer's state to suspect or dead that the nodes
logged meanwhile: all of them are false, since every node was up.  Then it
kills the third node and measures how long until both others drop it from
/peers.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import Cluster, start_all, time_to_mesh, wait_for  # noqa: E402

CHANGE = re.compile(r"peer (\S+): (\w+) -> (suspect|dead)")


def one_run(
    duration: float, connections: int, node_args: list[str], method: str, path: str
) -> tuple[int, int, float, float]:
    """
    False suspect and dead transitions during the load, the load's
    requests per second, and seconds until a killed node left both /peers.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        try:
            nodes = cluster.mesh(3, in_memory=True, args=node_args)
            start_all(nodes)
            time_to_mesh(nodes, 10)
            marks = [len(node.log()) for node in nodes]
            script = Path(tmp) / "method.lua"
            script.write_text(f'wrk.method = "{method}"\n')
            target = nodes[0].url + path
            wrk = subprocess.run(
                ["wrk", "-t1", f"-c{connections}", f"-d{duration:.0f}s", "-s", str(script), target],
                capture_output=True,
                text=True,
                check=True,
            )
            rate = float(re.search(r"Requests/sec:\s+([\d.]+)", wrk.stdout).group(1))  # type: ignore[union-attr]
            changes = [
                m for node, mark in zip(nodes, marks, strict=True) for m in CHANGE.findall(node.log()[mark:])
            ]
            suspect = sum(1 for _, _, new in changes if new == "suspect")
            dead = sum(1 for _, _, new in changes if new == "dead")
            a, b, c = nodes
            wait_for(lambda: c.id in a.peers() and c.id in b.peers(), 10, what="the mesh to recover")
            c.kill()
            killed = time.monotonic()
            wait_for(lambda: c.id not in a.peers() and c.id not in b.peers(), 30, 0.01, "c to leave /peers")
            return suspect, dead, rate, time.monotonic() - killed
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--node-args", default="", help="extra options for every node")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--path", default="/increment")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install wrk")
    node_args = shlex.split(args.node_args)
    print(f"node options: {' '.join(node_args) or '(defaults)'}")
    for run in range(1, args.runs + 1):
        suspect, dead, rate, gone = one_run(
            args.duration, args.connections, node_args, args.method, args.path
        )
        print(
            f"run {run}: wrk -c{args.connections} {args.method} {args.path} on 1 node of 3 "
            f"for {args.duration:.0f}s "
            f"({rate:.0f} requests/s): {suspect} false suspicions, {dead} false deaths; "
            f"then a killed node left both /peers after {gone:.2f}s"
        )


if __name__ == "__main__":
    main()
