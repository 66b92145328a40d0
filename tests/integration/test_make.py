"""
The Makefile's local cluster and the original's `make test-*` targets, run
as a user runs them, on free ports with a cluster name and discovery port of
their own: `make test-full` passes against a good cluster, and a target fails
with one line saying why when a node is removed or stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import free_port, free_ports, http, wait_for

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


class LocalCluster:
    def __init__(self, run: Path) -> None:
        ports = free_ports(4)
        self.ports, self.extra_port = ports[:3], ports[3]
        self.run = run
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        options = f"--cluster m-{uuid.uuid4().hex[:10]} --discovery-port {free_port(socket.SOCK_DGRAM)}"
        self.variables = [
            f"RUN={run}",
            f"VENV={VENV}",
            f"PYTHON={sys.executable}",
            f"PORTS={' '.join(map(str, self.ports))}",
            f"EXTRA_PORT={self.extra_port}",
            f"NODE_OPTIONS={options}",
            "DOCKER=no",
        ]

    def make(self, *targets: str, wait: float = 20) -> subprocess.CompletedProcess[str]:
        """Run make; C{wait}: seconds a check waits for a condition before failing."""
        # -o: never reinstall the venv the tests run from.
        command = ["make", "--no-print-directory", "-o", f"{VENV}/.installed", *targets, *self.variables]
        command.append(f"CHECK_TIMEOUT={wait:g}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)

    def pids(self) -> list[int]:
        return [int(p.read_text()) for p in self.run.glob("*.pid")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    )


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def failures(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The check's own lines on stderr (make adds its `***` lines)."""
    return [line for line in result.stderr.splitlines() if line.startswith("FAIL ")]


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path / "run")
    yield cluster
    started = cluster.pids()
    cluster.make("stop")
    for pid in started:  # should stop have failed, leave nothing behind
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_make_then_test_full_passes_and_fails_once_a_node_is_wrong(local: LocalCluster) -> None:
    up = local.make()  # the default target
    assert up.returncode == 0, up.stdout + up.stderr
    assert "no Docker engine answers" in up.stdout and "local twistd processes" in up.stdout
    assert "3 nodes up and meshed" in up.stdout

    full = local.make("test-full")
    assert full.returncode == 0, full.stdout + full.stderr
    assert "test-full: all 9 checks passed against 3 nodes" in full.stdout
    for check in (
        "health",
        "all-peers",
        "count",
        "increment",
        "retry",
        "sync",
        "peers",
        "remove-existing-peer",
        "discovery",
    ):
        assert f"ok test-{check}:" in full.stdout
    # Three increments, one retried six times under one key (counted once), and a sync of
    # +10, seen by every node; the fourth node is gone again.
    assert [http("GET", url + "/count")[1]["count"] for url in local.urls] == [14, 14, 14]
    assert not listening(local.extra_port)

    # A node that drops a peer: the peer check fails, naming both.
    first, second = (f"127.0.0.1:{p}" for p in local.ports[:2])
    assert http("POST", local.urls[0] + "/remove-peer", {"id": second})[0] == 200
    peers = local.make("test-all-peers", wait=4)
    assert peers.returncode != 0
    (line,) = failures(peers)
    assert line.startswith(
        f"FAIL test-all-peers: not every node lists every other after 4s: {first} does not list {second} "
    )

    # A stopped node: test-full stops at the first check, saying which node.
    os.kill(int((local.run / f"{local.ports[2]}.pid").read_text()), signal.SIGTERM)
    wait_for(lambda: not listening(local.ports[2]), 20, what="the third node to stop")
    full = local.make("test-full")
    assert full.returncode != 0
    assert failures(full) == [
        f"FAIL test-health: GET {local.urls[2]}/health: no answer ([Errno 111] Connection refused)"
    ]
    assert "test-full: test-health failed" in full.stderr


def test_make_cluster_with_a_port_taken_starts_nothing(local: LocalCluster) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", local.ports[2]))
        taken.listen()
        result = local.make("cluster")
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (
        f"make cluster: port {local.ports[2]} on 127.0.0.1 is in use by another program: started nothing "
        "(free it, or choose ports: make cluster PORTS='...')"
    )
    assert not any(listening(p) for p in local.ports[:2])
    assert local.pids() == []


def test_make_cluster_stops_what_it_started_when_a_node_fails(local: LocalCluster) -> None:
    local.run.mkdir()
    (local.run / f"data-{local.ports[2]}").write_text("not a directory")
    result = local.make("cluster")
    assert result.returncode != 0
    line = result.stderr.splitlines()[0]
    assert line.startswith(f"make cluster: node {local.ports[2]} did not start: ")
    assert line.endswith(f"stopped {', '.join(map(str, sorted(local.ports[:2])))}")
    assert not any(listening(p) for p in local.ports)
    assert local.pids() == []


def test_make_clean_waits_for_the_nodes_to_stop(local: LocalCluster) -> None:
    up = local.make("cluster")
    assert up.returncode == 0, up.stdout + up.stderr
    pids = local.pids()
    assert len(pids) == 3 and all(alive(p) for p in pids)

    clean = local.make("clean")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"stopped {' '.join(map(str, sorted(local.ports)))}" in clean.stdout
    # Gone when make returns: nothing is left to write into run/ after its removal.
    assert [p for p in pids if alive(p)] == []
    assert not local.run.exists()
