"""
Benchmark 3: scale.  N nodes on this host, one process each, finding each
other by UDP broadcast (no --peers), in memory.

    python benchmarks/scale.py [--quick] [--sizes 10,50,100] [--bound S]

For each size: seconds from the last node answering /health until every
/peers lists every other node (or "none within BOUND s"); the idle CPU per
node over a few seconds after that; the time for one increment on the first
node to be read on every node; and the replication pushes (messages) and
their bytes that one increment cost across the cluster (from each node's
/metrics).  Today every node probes every peer every second and pushes
every write to every peer: SWIM-style membership is not there yet, and
these figures show what that costs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import Client, Cluster, free_ports, idle_cpu, metrics_sum, wait_for

PUSHES = "dcounter_replication_pushes_total"
PUSH_BYTES = "dcounter_replication_push_bytes_total"


def listed(nodes: list, client_for: dict) -> int:
    """
    How many nodes list every other node.
    """
    ids = {n.id for n in nodes}
    complete = 0
    for n in nodes:
        try:
            if set(client_for[n.port].call("GET", "/peers")) == ids - {n.id}:
                complete += 1
        except (OSError, RuntimeError):
            client_for[n.port] = Client(n.port)
    return complete


def one_size(n: int, bound: float, idle: float) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), discovery=True)
        nodes = [cluster.add(p, in_memory=True) for p in free_ports(n)]
        try:
            spawned = time.monotonic()
            for node in nodes:
                node.start()
            for node in nodes:
                node.wait_up(120)
            answered = time.monotonic()
            clients = {node.port: Client(node.port) for node in nodes}
            best = 0
            mesh: float | str = f"none within {bound:.0f} s"
            while time.monotonic() - answered < bound:
                best = max(best, listed(nodes, clients))
                if best == n:
                    mesh = time.monotonic() - answered
                    break
            pids = [node.process.pid for node in nodes if node.process is not None]
            cpu = idle_cpu(pids, idle) / n
            ports = [node.port for node in nodes]
            pushes, pushed = metrics_sum(ports, PUSHES), metrics_sum(ports, PUSH_BYTES)
            target = clients[nodes[0].port].call("POST", "/counters/spread/increment")["count"]
            sent = time.monotonic()
            waiting = list(nodes[1:])

            def arrived() -> bool:
                nonlocal waiting
                still = []
                for node in waiting:
                    try:
                        if clients[node.port].call("GET", "/counters/spread")["count"] < target:
                            still.append(node)
                    except (OSError, RuntimeError):  # a 404 until it arrives
                        clients[node.port] = Client(node.port)
                        still.append(node)
                waiting = still
                return not waiting

            try:
                wait_for(arrived, 30, interval=0.001, what="the increment on every node")
                spread: float | str = time.monotonic() - sent
            except AssertionError:
                spread = f"{n - 1 - len(waiting)} of {n - 1} nodes within 30 s"
            time.sleep(0.5)  # pushes still under way are counted once they end
            messages = metrics_sum(ports, PUSHES) - pushes
            size = metrics_sum(ports, PUSH_BYTES) - pushed
            return {
                "nodes": n,
                "startup s": answered - spawned,
                "full mesh s": mesh,
                "most nodes listing all": best,
                "idle CPU per node": cpu,
                "increment on every node s": spread,
                "pushes per increment": messages,
                "push bytes per increment": size,
            }
        finally:
            cluster.stop()


def run(
    quick: bool, sizes: list[int] | None = None, bound: float | None = None
) -> list[dict[str, float | str]]:
    sizes = sizes or ([10] if quick else [10, 50])
    bound = bound or (20.0 if quick else 60.0)
    return [one_size(n, bound, 3.0 if quick else 5.0) for n in sizes]


def show(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.3f}" if value < 10 else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10 nodes, shorter bounds")
    parser.add_argument("--sizes", help="comma-separated cluster sizes [10,50]")
    parser.add_argument("--bound", type=float, help="seconds to wait for a full mesh")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    for row in run(args.quick, sizes, args.bound):
        print("; ".join(f"{k}: {show(v)}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
