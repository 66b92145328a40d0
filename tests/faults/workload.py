"""
Load on real nodes while a test injects faults, and the end of every fault
scenario: stop the load, wait for the nodes to agree, check the history.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.faults.history import History, Result
from tests.integration.harness import Node, wait_for

REPO = Path(__file__).resolve().parents[2]


#: Load clients started and not yet stopped: a test that fails half-way
#: leaves them to L{close_all} (conftest), not running on.
RUNNING: list[Load] = []


def close_all() -> None:
    for load in list(RUNNING):
        load.close()


class Load:
    """
    One load client process per node (inside the node's namespace, if it has
    one), each writing its operations to a file of its own.
    """

    def __init__(self, nodes: Sequence[Node], workdir: Path, *, threads: int = 2, wait: str = "") -> None:
        self.nodes = list(nodes)
        self.wait = wait
        self.workdir = workdir
        self.threads = threads
        self.clients: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self) -> Load:
        for k, node in enumerate(self.nodes):
            out = self.workdir / f"history-{k}-{len(self.clients)}.jsonl"
            command = [
                *node.prefix,
                sys.executable,
                "-m",
                "tests.faults.client",
                "--node",
                node.id,
                "--url",
                node.url,
                "--out",
                str(out),
                "--threads",
                str(self.threads),
                *(["--wait", self.wait] if self.wait else []),
            ]
            process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE)
            self.clients.append((process, out))
        RUNNING.append(self)
        for process, _ in self.clients:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == b"started"
        return self

    def close(self) -> None:
        """Stop every client, keeping nothing they recorded."""
        for process, _ in self.clients:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        self.clients.clear()
        if self in RUNNING:
            RUNNING.remove(self)

    def stop(self, history: History) -> None:
        """Stop every client (each finishes the operation it is in) and add their operations."""
        for process, _ in self.clients:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, out in self.clients:
            process.wait(timeout=30)
            if out.exists():
                history.load(out)
        self.clients.clear()
        RUNNING.remove(self)


def converge(nodes: Sequence[Node], timeout: float = 20.0) -> tuple[dict[str, int], float]:
    """
    Wait until every node reads the same count; return the counts and how
    long it took.
    """
    started = time.monotonic()

    def agreed() -> dict[str, int] | None:
        counts = {node.id: node.count() for node in nodes}
        return counts if len(set(counts.values())) == 1 else None

    try:
        counts = wait_for(agreed, timeout, interval=0.05, what="every node to read the same count")
    except AssertionError:
        counts = {node.id: node.count() for node in nodes}  # let the checker say what is wrong
    return counts, time.monotonic() - started


def finish(name: str, history: History, nodes: Sequence[Node], healed: float) -> Result:
    """
    Once load has stopped: wait for the nodes to agree, check the history,
    print the scenario's summary line and fail on any violation.  The
    convergence time counts from C{healed} (a monotonic time).
    """
    counts, _ = converge(nodes)
    converged = time.monotonic() - healed
    result = history.check(counts)
    print("\n" + result.summary(name, converged))
    assert result.acknowledged > 0, "no increment was acknowledged: the scenario tested nothing"
    assert result.lost == 0, f"acknowledged increments lost: {result.as_json()}"
    assert result.over == 0, f"over-counted: {result.as_json()}"
    bad = result.as_json()["bad_reads"]
    assert not result.bad_reads, f"{len(result.bad_reads)} reads out of bounds, first ones: {bad}"
    return result
