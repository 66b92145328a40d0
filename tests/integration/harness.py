"""
Real dcounter nodes for integration tests: `twistd` processes on real sockets.

Each L{Node} is one `twistd -n dcounter` child process with its own data
directory and log file.  Helpers talk to nodes with plain blocking HTTP
(urllib) and poll for conditions with a deadline: no sleeps stand in for
a condition.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

#: twistd of the running interpreter (python -m twisted is `twist`, another runner).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class NodeExited(Exception):
    pass


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """
    C{n} distinct free TCP ports (held open together, so they differ).
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "") -> Any:
    """
    Poll C{condition} until it returns something true; return it.  Raise
    AssertionError after C{timeout} seconds, with the last value seen.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = condition()
        except NodeExited:
            raise
        except Exception as e:  # a node not up yet, a refused connection
            last = e
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: last {last!r}")
        time.sleep(interval)


def http(method: str, url: str, body: object = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Node:
    def __init__(
        self,
        port: int,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        args: Sequence[str] = (),
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
        in_memory: bool = False,
    ) -> None:
        self.port = port
        self.host = host
        self.id = f"{host}:{port}"
        self.url = f"http://{host}:{port}"
        self.workdir = workdir
        self.data_dir = None if in_memory else workdir / f"data-{self.id}"
        self.log_path = workdir / f"node-{self.id}.log"
        self.args = list(args)
        self.prefix = list(prefix)
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            *self.prefix,
            *TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            "dcounter",
            "--port",
            str(self.port),
            "--listen",
            f"tcp:{self.port}:interface={self.host}",
            "--advertise",
            self.id,
            *(["--in-memory"] if self.data_dir is None else ["--data-dir", str(self.data_dir)]),
            *self.args,
        ]

    def start(self) -> Node:
        assert self.process is None or self.process.poll() is not None, "already running"
        env = dict(os.environ if self.env is None else self.env)
        self.process = subprocess.Popen(
            self.command(), cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        return self

    def wait_up(self, timeout: float = 15.0) -> Node:
        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                raise NodeExited(f"node {self.id} exited: {stderr[-2000:]}\n{self.log()[-2000:]}")
            return self.get("/health")[0] == 200

        wait_for(up, timeout, what=f"{self.id} to answer")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: the process stays, and its sockets, but it does nothing."""
        assert self.process is not None and self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def get(self, path: str) -> tuple[int, Any]:
        return http("GET", self.url + path)

    def from_inside(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """
        The same request as L{http}, made from the node's own host (its
        network namespace): for a host the test cannot reach.
        """
        script = (
            "import json, sys; from tests.integration.harness import http; "
            "print(json.dumps(http(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))))"
        )
        result = subprocess.run(
            [*self.prefix, sys.executable, "-c", script, method, self.url + path, json.dumps(body)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"request from inside {self.id} failed: {result.stderr[-1000:]}")
        status, answer = json.loads(result.stdout)
        return status, answer

    def post(self, path: str, body: object = None) -> tuple[int, Any]:
        return http("POST", self.url + path, body)

    def peers(self) -> set[str]:
        status, body = self.get("/peers")
        assert status == 200, body
        return set(body)

    def count(self, name: str | None = None) -> int:
        status, body = self.get("/count" if name is None else f"/counters/{name}")
        assert status == 200, body
        return int(body["count"])


class Cluster:
    """
    A set of nodes sharing a cluster name and a discovery port, so that
    tests never hear each other (or a `make cluster` on the same host).
    """

    def __init__(self, workdir: Path, *, discovery: bool = False, extra: Iterable[str] = ()) -> None:
        self.workdir = workdir
        self.name = "t-" + uuid.uuid4().hex[:10]
        self.discovery_port = free_port(socket.SOCK_DGRAM)
        self.discovery = discovery
        self.extra = list(extra)
        self.nodes: list[Node] = []

    def add(
        self, port: int | None = None, *, peers: Iterable[str] = (), args: Sequence[str] = (), **kw: Any
    ) -> Node:
        common = ["--cluster", self.name, "--discovery-port", str(self.discovery_port)]
        if not self.discovery:
            common.append("--no-discovery")
        peer_list = [p for p in peers]
        if peer_list:
            common += ["--peers", ",".join(peer_list)]
        node = Node(port or free_port(), self.workdir, args=[*common, *self.extra, *args], **kw)
        self.nodes.append(node)
        return node

    def mesh(self, n: int, **kw: Any) -> list[Node]:
        """
        C{n} nodes that each know all the others as seeds.
        """
        ports = free_ports(n)
        ids = [f"127.0.0.1:{p}" for p in ports]
        return [self.add(p, peers=[i for i in ids if i != ids[k]], **kw) for k, p in enumerate(ports)]

    def stop(self) -> None:
        for node in self.nodes:
            node.kill(signal.SIGTERM)


def stored_slots(node: Node, counter: str = "default") -> dict[str, tuple[int, int]]:
    """The slots of C{counter} in C{node}'s database (running or not), by replica."""
    assert node.data_dir is not None
    db = sqlite3.connect(f"file:{node.data_dir / 'dcounter.sqlite3'}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT replica, p, n FROM slots WHERE counter = ?", (counter,)).fetchall()
    finally:
        db.close()
    return {replica: (p, n) for replica, p, n in rows}


def slot_kinds(node: Node, owner: Node) -> list[str]:
    """The kinds ("folded", "live") of C{owner}'s slots of the default counter in C{node}'s database."""
    return sorted(
        "folded" if r.rpartition("/")[2].startswith("folded-") else "live"
        for r in stored_slots(node)
        if r.startswith(owner.id + "/")
    )


def all_listed(nodes: Sequence[Node]) -> bool:
    """
    Whether every node's /peers is exactly every other node.
    """
    ids = {n.id for n in nodes}
    return all(n.peers() == ids - {n.id} for n in nodes)


def start_all(nodes: Sequence[Node], timeout: float = 15.0) -> float:
    """
    Start the nodes together and wait until every one answers; return the
    time (monotonic) when the last did.
    """
    for node in nodes:
        node.start()
    for node in nodes:
        node.wait_up(timeout)
    return time.monotonic()


def time_to_mesh(nodes: Sequence[Node], bound: float, interval: float = 0.02) -> float:
    """
    Seconds until every node lists every other; fails past C{bound}.
    """
    started = time.monotonic()
    wait_for(lambda: all_listed(nodes), bound, interval, what=f"{len(nodes)} nodes to list each other")
    return time.monotonic() - started


class JoinTimes(NamedTuple):
    startup: float  #: from spawning the first nodes until all answer
    mesh: float  #: from then until they list each other
    join: float  #: from the last node answering until all list all


def start_then_join(nodes: Sequence[Node], bound: float) -> JoinTimes:
    """
    Start all nodes but the last together, wait until they list each other;
    then start the last, and wait until every node lists every other.  Each
    wait fails past C{bound}.
    """
    *first, late = nodes
    spawned = time.monotonic()
    startup = start_all(first) - spawned
    mesh = time_to_mesh(first, bound)
    start_all([late])
    return JoinTimes(startup, mesh, time_to_mesh(nodes, bound))


def process_cpu_seconds(pids: Iterable[int]) -> float:
    """
    User and system CPU time used so far by these processes (Linux /proc).
    """
    return sum(cpu_ticks(Path(f"/proc/{pid}/stat")) for pid in pids) / os.sysconf("SC_CLK_TCK")


def cpu_ticks(stat: Path) -> int:
    """User and system CPU time, in clock ticks, from a process's or a thread's /proc stat file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime
