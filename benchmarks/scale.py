"""
Benchmark 3: scale.  N nodes on this host, one process each, finding each
other by UDP broadcast (no --peers), in memory.

    python benchmarks/scale.py [--quick] [--sizes 10,50,100] [--bound S]

For each size: seconds from spawning the processes until all answer
/health (past 4 x BOUND, the figures are of those that do); from then
until every /peers lists every other node (or "none within BOUND s"); the idle CPU per
node over a few seconds after that; the time for one increment on the first
node to be read on every node; and the replication pushes (messages) and
their bytes that one increment cost across the cluster (from each node's
/metrics).  Today every node probes every peer every second and pushes
every write to every peer: SWIM-style membership is not there yet, and
these figures show what that costs.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from common import Client, Cluster, Node, free_ports, idle_cpu, metrics_sum, wait_for

PUSHES = "dcounter_replication_pushes_total"
PUSH_BYTES = "dcounter_replication_push_bytes_total"


def listed(nodes: list[Node], client_for: dict[int, Client]) -> int:
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


def replication_totals(ports: list[int]) -> tuple[float, float] | None:
    """
    Pushes and their bytes, summed over the nodes; None if a node does not
    answer (a saturated machine).
    """
    try:
        return metrics_sum(ports, PUSHES), metrics_sum(ports, PUSH_BYTES)
    except (OSError, RuntimeError):
        return None


def answering(node: Node) -> bool:
    try:
        Client(node.port, timeout=5).call("GET", "/health")
        return True
    except (OSError, RuntimeError):
        return False


def stop(nodes: list[Node]) -> None:
    """
    Stop every node at once (a saturated machine stops them slowly).
    """
    running = [n.process for n in nodes if n.process is not None and n.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def one_size(n: int, bound: float, idle: float) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), discovery=True)
        nodes = [cluster.add(p, in_memory=True) for p in free_ports(n)]
        try:
            spawned = time.monotonic()
            for node in nodes:
                node.start()
            # Every node answering, within the bound: past it, measure those
            # that do (with 50 nodes the probes of every peer by every node
            # can saturate two cores before the last one answers).
            waiting = list(nodes)
            while waiting and time.monotonic() - spawned < 4 * bound:
                waiting = [node for node in waiting if not answering(node)]
            answered = time.monotonic()
            if waiting:
                nodes = [node for node in nodes if node not in waiting]
            up: float | str = (
                answered - spawned
                if not waiting
                else f"{len(nodes)} of {n} answered within {4 * bound:.0f} s"
            )
            if not nodes:
                return {"nodes": n, "startup s": up}
            clients = {node.port: Client(node.port, timeout=2) for node in nodes}
            best = 0
            mesh: float | str = f"none within {bound:.0f} s"
            while nodes and time.monotonic() - answered < bound:
                best = max(best, listed(nodes, clients))
                if best == len(nodes):
                    mesh = time.monotonic() - answered
                    break
            pids = [node.process.pid for node in nodes if node.process is not None]
            cpu = idle_cpu(pids, idle) / len(nodes)
            ports = [node.port for node in nodes]
            before = replication_totals(ports)
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
                        clients[node.port] = Client(node.port, timeout=2)
                        still.append(node)
                waiting = still
                return not waiting

            try:
                wait_for(arrived, bound, interval=0.001, what="the increment on every node")
                spread: float | str = time.monotonic() - sent
            except AssertionError:
                spread = f"{len(nodes) - 1 - len(waiting)} of {len(nodes) - 1} nodes within {bound:.0f} s"
            time.sleep(0.5)  # pushes still under way are counted once they end
            after = replication_totals(ports)
            messages: float | str = "a /metrics scrape failed"
            size: float | str = messages
            if before is not None and after is not None:
                messages, size = after[0] - before[0], after[1] - before[1]
            return {
                "nodes": n,
                "startup s": up,
                "full mesh s": mesh,
                "most nodes listing all": best,
                "idle CPU per node": cpu,
                "increment on every node s": spread,
                "pushes per increment": messages,
                "push bytes per increment": size,
            }
        finally:
            stop(cluster.nodes)


def run(
    quick: bool, sizes: list[int] | None = None, bound: float | None = None
) -> list[dict[str, float | str]]:
    sizes = sizes or ([10] if quick else [10, 50])
    bound = bound or (20.0 if quick else 30.0)
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
