"""
Benchmark 4: memory, and anti-entropy's cost with many counters.

    python benchmarks/memory.py [--quick] [--data-dir]

A three-node cluster (seeds, no discovery, in memory unless --data-dir):
RSS of each node at rest; then 1,000,000 increments over 10,000 counters
sent to the first node as batches (POST /counters, 2,500 counters of +1
each per request, 400 requests; --quick: 100,000 increments), and once every
node reads them all, RSS of each node again.  Then, with the cluster idle,
the bytes of anti-entropy per round (both bodies, from /metrics, over
several rounds), beside the size of one whole-state body, which every round
shipped both ways before digests.  Goals: RSS < 60 MB per node at rest;
< 10 KB per idle round with 10,000 counters.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import Client, Cluster, metrics_sum, rss_mb, wait_for

COUNTERS = 10_000
BATCH = 2_500
ROUNDS = "dcounter_anti_entropy_rounds_total"
BYTES = "dcounter_anti_entropy_bytes_total"


def run(quick: bool, data_dir: bool = False) -> dict[str, float]:
    increments = 100_000 if quick else 1_000_000
    names = [f"page.{i}" for i in range(COUNTERS)]
    per_counter = increments // COUNTERS
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        nodes = cluster.mesh(3, in_memory=not data_dir, args=["--anti-entropy-interval", "1"])
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                node.wait_up(60)
            wait_for(lambda: all(len(n.peers()) == 2 for n in nodes), 30, what="a mesh of three")
            pids = [n.process.pid for n in nodes if n.process is not None]
            at_rest = [rss_mb(pid) for pid in pids]
            writer = Client(nodes[0].port)
            started = time.monotonic()
            for _ in range(per_counter):
                for first in range(0, COUNTERS, BATCH):
                    writer.call("POST", "/counters", {name: 1 for name in names[first : first + BATCH]})
            written = time.monotonic() - started

            def converged() -> bool:
                for node in nodes:
                    values = Client(node.port).call("GET", "/counters")["counters"]
                    if len(values) < COUNTERS or sum(values.values()) < increments:
                        return False
                return True

            wait_for(converged, 120, interval=0.2, what="every node to read every increment")
            loaded = [rss_mb(pid) for pid in pids]
            ports = [n.port for n in nodes]
            time.sleep(2.0)  # rounds begun while the writes replicated end first
            rounds0 = metrics_sum(ports, ROUNDS, outcome="ok")
            bytes0 = metrics_sum(ports, BYTES)
            time.sleep(4.0 if quick else 10.0)  # idle rounds run every second on each node
            rounds = metrics_sum(ports, ROUNDS, outcome="ok") - rounds0
            traffic = metrics_sum(ports, BYTES) - bytes0
            health = writer.call("GET", "/health")
            replica = f"{health['node_id']}/{health['incarnation']}"
            whole = len(
                json.dumps(
                    {name: {replica: [per_counter, 0]} for name in names}, separators=(",", ":")
                ).encode()
            )
        finally:
            cluster.stop()
    return {
        "RSS at rest MB (max of 3)": max(at_rest),
        f"RSS after {increments:,} increments over {COUNTERS:,} counters MB (max of 3)": max(loaded),
        "batched increments/s": increments / written,
        "idle anti-entropy rounds measured": rounds,
        "idle anti-entropy bytes per round": traffic / rounds if rounds else float("nan"),
        "one whole-state body bytes (before digests: two per round)": whole,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100,000 increments, a shorter idle window")
    parser.add_argument("--data-dir", action="store_true", help="nodes keep their counters in SQLite")
    args = parser.parse_args()
    for name, value in run(args.quick, args.data_dir).items():
        print(f"{name}: {value:.1f}" if "MB" in name else f"{name}: {value:.0f}")


if __name__ == "__main__":
    main()
