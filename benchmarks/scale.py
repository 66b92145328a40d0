"""
Benchmark 3: scale.  N nodes on this host, packed K to a process
(benchmarks/multinode.py: K whole nodes on one reactor), finding each other
by UDP broadcast (no --peers), in memory.

    python benchmarks/scale.py [--quick] [--sizes 10,50,100] [--per-process K]
        [--watch S] [--bound S] [-- node options...]

100 Python processes do not fit 2 cores (starting 50 alone took 86 s), so by
default the nodes are packed 10 to a process: 10 nodes are 1 process, 50 are
5, 100 are 10.  `--per-process 1` is one process per node, as before.
Options after `--` go to every node (e.g. `--push-fanout 3`).

For each size:
  - startup s: from spawning the first process until every node answers
    /health; the nodes start one after another, 0.2 s apart, each process
    once the nodes of the one before answer (--together: all at once; each
    joiner is still probed for admission by every member, at most 4 probes
    in flight a node: at 100 nodes on 2 cores every node answered after 20
    to 22 s, and after 105 s or more with 32 in flight: see README, Not
    done yet);
  - full mesh s: from then until every /peers lists every other node;
  - false suspicions: peers that became suspect or dead in any node's table
    (dcounter_peer_state_changes_total) over the next --watch seconds, while
    every process runs and nothing is killed: each is false;
  - idle CPU per node: the processes' CPU over that window / the nodes;
  - increment on every node s: from the answer to one increment on the first
    node until every node reads it;
  - pushes and push bytes per increment: replication pushes (messages) and
    their bytes, summed over the cluster, that the increment cost;
  - burst: every node increments once at the same time: the time until
    every node reads all N, and the pushes and bytes per increment;
  - load: the load average (1 min) when the size started: the machine is
    shared, and the figures move with it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import (
    ROOT,
    Client,
    free_port,
    free_ports,
    metrics_sum,
    process_cpu_seconds,
    split_node_args,
    wait_for,
)

PUSHES = "dcounter_replication_pushes_total"
PUSH_BYTES = "dcounter_replication_push_bytes_total"
CHANGES = "dcounter_peer_state_changes_total"
MULTINODE = ROOT / "benchmarks" / "multinode.py"
#: Nodes per process by default: what fits 2 cores at 100 nodes.
PER_PROCESS = 10
#: Seconds between two nodes' starts in a rolling start.
STAGGER = 0.2


class Group:
    """
    One process running several nodes (benchmarks/multinode.py).
    """

    def __init__(self, ports: list[int], workdir: Path, common: list[str], stagger: float = 0.0) -> None:
        self.ports = ports
        self.log = workdir / f"group-{ports[0]}.log"
        self.command = [
            sys.executable,
            str(MULTINODE),
            "--ports",
            ",".join(map(str, ports)),
            "--log",
            str(self.log),
            "--stagger",
            str(stagger),
            "--",
            *common,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def listed(ports: list[int], clients: dict[int, Client], deadline: float) -> int:
    """
    How many nodes list every other node (of those asked before C{deadline}).
    """
    ids = {f"127.0.0.1:{p}" for p in ports}
    complete = 0
    for port in ports:
        if time.monotonic() > deadline:
            break
        try:
            if set(clients[port].call("GET", "/peers")) == ids - {f"127.0.0.1:{port}"}:
                complete += 1
        except (OSError, RuntimeError):
            clients[port] = Client(port, timeout=2)
    return complete


def totals(ports: list[int], name: str, **labels: str) -> float | None:
    """
    A metric summed over the nodes; None if a node does not answer.
    """
    try:
        return metrics_sum(ports, name, timeout=3, **labels)
    except (OSError, RuntimeError):
        return None


def answering(port: int) -> bool:
    client = Client(port, timeout=2)
    try:
        client.call("GET", "/health")
        return True
    except (OSError, RuntimeError):
        return False
    finally:
        client.close()


def stop(groups: list[Group]) -> None:
    running = [g.process for g in groups if g.process is not None and g.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def suspicions(ports: list[int]) -> float | None:
    s, d = totals(ports, CHANGES, state="suspect"), totals(ports, CHANGES, state="dead")
    return None if s is None or d is None else s + d


class Reading:
    """
    A condition for wait_for: every node of C{ports} reads at least
    C{target} on counter C{name}.  C{waiting} holds those that do not yet;
    a node that fails to answer (a 404 until the counter arrives, a timeout)
    gets a new client and stays waiting.
    """

    def __init__(self, clients: dict[int, Client], ports: list[int], name: str, target: int) -> None:
        self.clients = clients
        self.waiting = list(ports)
        self.path = f"/counters/{name}"
        self.target = target

    def __call__(self) -> bool:
        still = []
        for port in self.waiting:
            try:
                if self.clients[port].call("GET", self.path)["count"] < self.target:
                    still.append(port)
            except (OSError, RuntimeError):
                self.clients[port] = Client(port, timeout=2)
                still.append(port)
        self.waiting = still
        return not self.waiting


def burst(ports: list[int], clients: dict[int, Client], bound: float) -> dict[str, float | str]:
    """
    Every node increments one counter once, all at the same time: the time
    from the first request until every node reads them all, and the pushes
    and bytes per increment (where batching can make gossip cheaper).
    """
    n = len(ports)
    pushes, sent_bytes = totals(ports, PUSHES), totals(ports, PUSH_BYTES)

    def increment(port: int) -> None:
        client = Client(port, timeout=bound)
        try:
            client.call("POST", "/counters/burst/increment")
        finally:
            client.close()

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(increment, ports))
    everywhere = Reading(clients, ports, "burst", n)
    row: dict[str, float | str] = {}
    try:
        wait_for(everywhere, bound, interval=0.001, what="every node's increment on every node")
        row["burst: all read all s"] = time.monotonic() - started
    except AssertionError:
        row["burst: all read all s"] = f"{n - len(everywhere.waiting)} of {n} within {bound:.0f} s"
    time.sleep(0.5)
    pushes_after, bytes_after = totals(ports, PUSHES), totals(ports, PUSH_BYTES)
    if None in (pushes, sent_bytes, pushes_after, bytes_after):
        row["burst: pushes per increment"] = "a /metrics scrape failed"
    else:
        row["burst: pushes per increment"] = (pushes_after - pushes) / n  # type: ignore[operator]
        row["burst: push bytes per increment"] = (bytes_after - sent_bytes) / n  # type: ignore[operator]
    return row


def one_size(
    n: int, per_process: int, bound: float, watch: float, node_args: list[str], rolling: bool = True
) -> dict[str, float | str]:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        common = [
            "--cluster",
            "s-" + uuid.uuid4().hex[:10],
            "--discovery-port",
            str(free_port(socket.SOCK_DGRAM)),
            "--in-memory",
            *node_args,
        ]
        ports = free_ports(n)
        stagger = STAGGER if rolling else 0.0
        groups = [
            Group(ports[i : i + per_process], Path(tmp), common, stagger) for i in range(0, n, per_process)
        ]
        row: dict[str, float | str] = {
            "nodes": n,
            "packing": f"{len(groups)} processes x {per_process} nodes, started "
            + (f"one after another, {STAGGER} s apart" if rolling else "together"),
            "load": load,
        }
        try:
            spawned = time.monotonic()
            deadline = spawned + 4 * bound
            waiting = []

            def unanswered(ports: list[int]) -> list[int]:
                return [p for p in ports if time.monotonic() > deadline or not answering(p)]

            for group in groups:
                group.start()
                waiting += group.ports
                while rolling and waiting and time.monotonic() < deadline:
                    waiting = unanswered(waiting)
            while waiting and time.monotonic() < deadline:
                waiting = unanswered(waiting)
            answered = time.monotonic()
            if waiting:
                row["startup s"] = f"{n - len(waiting)} of {n} answered within {4 * bound:.0f} s"
                return row
            row["startup s"] = answered - spawned
            clients = {p: Client(p, timeout=2) for p in ports}
            best = 0
            row["full mesh s"] = f"none within {bound:.0f} s"
            while time.monotonic() - answered < bound:
                best = max(best, listed(ports, clients, answered + bound))
                if best == n:
                    row["full mesh s"] = time.monotonic() - answered
                    break
            if best < n:
                row["most nodes listing all"] = best

            # Idle: nothing but the nodes' own traffic, every process running.
            pids = [g.process.pid for g in groups if g.process is not None]
            before = suspicions(ports)
            cpu, started = process_cpu_seconds(pids), time.monotonic()
            time.sleep(watch)  # measuring idling over a duration: nothing to poll for
            row["idle CPU per node"] = (process_cpu_seconds(pids) - cpu) / (time.monotonic() - started) / n
            after = suspicions(ports)
            if not all(g.running() for g in groups):
                row["false suspicions"] = "a process exited"
            elif before is None or after is None:
                row["false suspicions"] = "a /metrics scrape failed"
            else:
                row["false suspicions"] = after - before
            row["watched s"] = watch

            if best < n:
                return row  # no cluster to time increments in
            pushes, sent_bytes = totals(ports, PUSHES), totals(ports, PUSH_BYTES)
            target = clients[ports[0]].call("POST", "/counters/spread/increment")["count"]
            sent = time.monotonic()
            arrived = Reading(clients, ports[1:], "spread", target)
            try:
                wait_for(arrived, bound, interval=0.001, what="the increment on every node")
                row["increment on every node s"] = time.monotonic() - sent
            except AssertionError:
                left = len(arrived.waiting)
                row["increment on every node s"] = f"{n - 1 - left} of {n - 1} within {bound:.0f} s"
            time.sleep(0.5)  # pushes still under way are counted once they end
            pushes_after, bytes_after = totals(ports, PUSHES), totals(ports, PUSH_BYTES)
            if None in (pushes, sent_bytes, pushes_after, bytes_after):
                row["pushes per increment"] = "a /metrics scrape failed"
            else:
                row["pushes per increment"] = pushes_after - pushes  # type: ignore[operator]
                row["push bytes per increment"] = bytes_after - sent_bytes  # type: ignore[operator]
            row.update(burst(ports, clients, bound))
            return row
        finally:
            stop(groups)


def run(
    quick: bool,
    sizes: list[int] | None = None,
    bound: float | None = None,
    per_process: int = PER_PROCESS,
    watch: float | None = None,
    node_args: list[str] | None = None,
    verbose: bool = False,
    rolling: bool = True,
) -> list[dict[str, float | str]]:
    sizes = sizes or ([10] if quick else [10, 50, 100])
    bound = bound or (20.0 if quick else 30.0)
    watch = watch or (10.0 if quick else 60.0)
    rows = []
    for n in sizes:
        rows.append(one_size(n, per_process, bound, watch, node_args or [], rolling))
        first, row = rows[0].get("idle CPU per node"), rows[-1].get("idle CPU per node")
        if len(rows) > 1 and isinstance(first, float) and isinstance(row, float) and first > 0:
            rows[-1][f"idle CPU per node / at {rows[0]['nodes']} nodes"] = row / first
        if verbose:
            print("; ".join(f"{k}: {show(v)}" for k, v in rows[-1].items()), flush=True)
    return rows


def show(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.3f}" if value < 10 else f"{value:.0f}"


def main() -> None:
    argv, node_args = split_node_args(sys.argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10 nodes, shorter bounds and watch")
    parser.add_argument("--sizes", help="comma-separated cluster sizes [10,50,100]")
    parser.add_argument("--per-process", type=int, default=PER_PROCESS, help="nodes per process [10]")
    parser.add_argument("--watch", type=float, help="seconds of idling watched for suspicions [60]")
    parser.add_argument("--bound", type=float, help="seconds to wait for a full mesh [30]")
    parser.add_argument(
        "--together",
        action="store_true",
        help="start every process at once [one after another, each once its nodes answer]",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    # SIGTERM stops the node processes too (the finally clauses run).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    run(
        args.quick,
        sizes,
        args.bound,
        args.per_process,
        args.watch,
        node_args,
        verbose=True,
        rolling=not args.together,
    )


if __name__ == "__main__":
    main()
