"""
Shared helpers for the benchmarks: nodes pinned to cores, wrk, /metrics,
RSS and CPU of processes.  Everything runs on loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.harness import (  # noqa: E402
    Cluster,
    Node,
    cpu_ticks,
    free_port,
    free_ports,
    process_cpu_seconds,
    wait_for,
)

__all__ = [
    "Cluster",
    "Node",
    "free_port",
    "free_ports",
    "process_cpu_seconds",
    "wait_for",
]

#: The core the server under test runs on, and the one wrk runs on.
SERVER_CORE = "0"
CLIENT_CORE = "1"


def split_node_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """
    A script's own arguments, and those after C{--}, which go to every node.
    """
    if "--" not in argv:
        return argv, []
    split = argv.index("--")
    return argv[:split], argv[split + 1 :]


def pinned(core: str) -> list[str]:
    """
    A command prefix that pins a process to C{core}, if taskset is here and
    the machine has more than one core.
    """
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", core]
    return []


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def side_threads(pid: int) -> tuple[float, int]:
    """
    CPU seconds used so far by a process's threads other than its main one
    (a node with a data directory: its commit thread), and the context
    switches of all its threads (Linux /proc).
    """
    ticks = switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if int(task.name) != pid:
                ticks += cpu_ticks(task / "stat")
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:  # voluntary and not
                    switches += int(line.split()[1])
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return ticks / os.sysconf("SC_CLK_TCK"), switches


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


_WRK_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_WRK_BAD = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_ERRORS = re.compile(r"Socket errors:.*")


def wrk(
    url: str,
    seconds: float,
    *,
    method: str = "POST",
    connections: int = 32,
    threads: int = 2,
    delay_ms: float | None = None,
    body: str | None = None,
) -> float:
    """
    Run wrk (pinned to the client core) against C{url}; return requests/s.
    Fails if any answer was not a 2xx.  With C{delay_ms}, each connection
    waits that long between requests (a paced load).
    """
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    script = [f'wrk.method = "{method}"']
    if body is not None:
        script.append(f"wrk.body = {json.dumps(body)}")
        script.append('wrk.headers["Content-Type"] = "application/json"')
    if delay_ms is not None:
        script.append(f"function delay() return {delay_ms:.3f} end")
    path = Path(f"/tmp/dcounter-bench-{os.getpid()}.lua")
    path.write_text("\n".join(script) + "\n")
    try:
        out = subprocess.run(
            [
                *pinned(CLIENT_CORE),
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "-s",
                str(path),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        path.unlink(missing_ok=True)
    bad = _WRK_BAD.search(out)
    if bad:
        raise RuntimeError(f"wrk got {bad.group(1)} non-2xx answers from {url}:\n{out}")
    rate = _WRK_RATE.search(out)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return float(rate.group(1))


class Client:
    """
    One keep-alive HTTP connection to a node, for tight loops.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=timeout)

    def call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            try:
                self.connection.request(
                    method, path, body=data if method == "POST" else None, headers=headers
                )
                response = self.connection.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed this kept-alive connection (its idle
                # timeout, or a saturated machine): once more, on a new one.
                self.connection.close()
                if attempt == 2:
                    raise
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {raw[:200]!r}")
        return (
            json.loads(raw) if response.getheader("Content-Type", "").startswith("application/json") else raw
        )

    def close(self) -> None:
        self.connection.close()


def metric(port: int, name: str, timeout: float = 10, **labels: str) -> float:
    """
    The sum of the samples of C{name} with these labels in a node's /metrics.
    """
    from prometheus_client.parser import text_string_to_metric_families

    client = Client(port, timeout=timeout)
    try:
        text = client.call("GET", "/metrics").decode()
    finally:
        client.close()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def metrics_sum(ports: Iterable[int], name: str, timeout: float = 10, **labels: str) -> float:
    return sum(metric(p, name, timeout, **labels) for p in ports)


def idle_cpu(pids: Sequence[int], seconds: float) -> float:
    """
    CPU-seconds per second the processes use over C{seconds}, in total.
    """
    before, started = process_cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)  # measuring idling over a duration: nothing to poll for
    return (process_cpu_seconds(pids) - before) / (time.monotonic() - started)
