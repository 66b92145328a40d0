"""
Shared helpers for the unit tests of the Twisted parts: in-memory nodes and
an in-memory network of them, all on one L{Clock}, no global reactor.

A L{Network} is one L{StubTreq} over a small resource that hands each request
to the node whose address is in its Host header.  Every node's L{PeerClient}
talks through the network's L{Network.request}, which records each request
and can refuse a node (L{Network.cut}: a dead or partitioned peer) or hold its
requests unanswered (L{Network.hold}: a slow peer, or a request in flight).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from random import Random
from typing import Any
from urllib.parse import urlsplit

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from dcounter.api import CounterAPI
from dcounter.client import PeerClient
from dcounter.health import HealthChecker
from dcounter.membership import Membership
from dcounter.node import Node
from dcounter.replication import Replicator
from dcounter.store import Durable, MemoryStore
from dcounter.tap import Options, assemble

CLUSTER = "dcounter"
#: The peer client's request timeout, in (Clock) seconds.
TIMEOUT = 0.75


def address(port: int) -> str:
    return f"127.0.0.1:{port}"


@dataclass
class TestNode:
    """
    One node's parts, wired as makeService wires them, on a shared clock.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    clock: Clock
    store: MemoryStore
    node: Node
    membership: Membership
    client: PeerClient
    health: HealthChecker
    replicator: Replicator
    api: CounterAPI
    resource: Any = field(repr=False)

    @property
    def id(self) -> str:
        return self.node.node_id

    def start_health(self) -> None:
        """
        Start the health checker's timers and admission, as makeService does.
        """
        from dcounter.tap import health_services

        self._timers = health_services(self.health, self.clock)
        for timer in self._timers:
            timer.startService()

    def stop_health(self) -> None:
        for timer in getattr(self, "_timers", []):
            timer.stopService()

    def count(self, name: str = "default") -> int:
        return self.node.value(name)

    def increment(self, by: int = 1, name: str = "default") -> int:
        """
        A local write, as POST /increment makes one; returns the new value.
        """
        value: int = result_of(self.node.add(name, by))  # MemoryStore: durable at once
        return value


def make_node(
    node_id: str = "127.0.0.1:9001",
    *,
    http: Any,
    clock: Clock,
    cluster: str = CLUSTER,
    seeds: Iterable[str] = (),
    health_interval: float = 1.0,
    anti_entropy_interval: float = 2.0,
    timeout: float = TIMEOUT,
    discovery: Any = None,
    keys: Iterable[str] = (),
    admin_token: str | None = None,
    client_token: str | None = None,
    indirect: int = 3,
    fold_after: float = 60.0,
    push_fanout: int = 3,
    gossip_above: int | None = None,
    **membership_options: Any,
) -> TestNode:
    """
    An in-memory node: MemoryStore, Membership, HealthChecker, Replicator and
    CounterAPI on C{clock}, speaking to peers through C{http} (anything with
    treq's C{request}).  Its loops are not started.
    """
    options = dict(Options().defaults)
    options.update(
        {
            "cluster": cluster,
            "peers": list(seeds),
            "health-interval": health_interval,
            "probe-timeout": timeout,
            "indirect-probes": indirect,
            "anti-entropy-interval": anti_entropy_interval,
            "fold-after": fold_after,
            "keys": list(keys),
            "admin-token": admin_token,
            "client-token": client_token,
            "push-fanout": push_fanout,
        }
    )
    if gossip_above is not None:
        options["gossip-above"] = gossip_above
    store = MemoryStore(node_id)
    parts = assemble(
        options,
        store,
        clock,
        http,
        membership=Membership(node_id, **membership_options),
        discovery=None if discovery is None else lambda *_: discovery,
        # Seeded by the node's id: the order of probes is the same at each run.
        rng=Random(node_id),
    )
    node, membership, client, health, replicator, api = (
        parts.node,
        parts.membership,
        parts.client,
        parts.health,
        parts.replicator,
        parts.api,
    )
    node.load()
    return TestNode(clock, store, node, membership, client, health, replicator, api, api.resource())


class _ByHost(Resource):
    """
    The root of the shared StubTreq site: renders each request with the
    resource of the node named by its Host header.
    """

    isLeaf = True

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.network = network

    def render(self, request: Any) -> Any:
        host = (request.getHeader(b"host") or b"").decode()
        if host in self.network.held:
            self.network.held[host].append(_Held(request))
            return NOT_DONE_YET
        return self.network.nodes[host].resource.render(request)


class _Held:
    """
    A request left unanswered, and whether its client has given up on it.
    """

    def __init__(self, request: Any) -> None:
        self.request = request
        self.abandoned = False
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, reason: Failure) -> None:
        self.abandoned = True


@dataclass(frozen=True)
class Sent:
    """
    One request made: method, destination address, path, JSON body, and
    the node that made it ("" for a client outside the cluster).
    """

    method: str
    to: str
    path: str
    body: Any = None
    sender: str = ""


class _From:
    """
    The HTTP client of one node of a L{Network}.
    """

    def __init__(self, network: Network, sender: str) -> None:
        self.network = network
        self.sender = sender

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        return self.network.request(method, url, sender=self.sender, **kwargs)


class Network:
    """
    Several in-memory nodes on one clock, reaching each other over one
    StubTreq.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.nodes: dict[str, TestNode] = {}
        self.down: set[str] = set()
        self.links_down: set[frozenset[str]] = set()
        self.held: dict[str, list[_Held]] = {}
        self.sent: list[Sent] = []
        self.max_requests = 5000
        self.stub = StubTreq(_ByHost(self))

    # Building it.

    def add(self, port: int, **options: Any) -> TestNode:
        node_id = address(port)
        node = make_node(node_id, http=_From(self, node_id), clock=self.clock, **options)
        self.nodes[node.id] = node
        return node

    def alias(self, other_address: str, node: TestNode) -> None:
        """
        Make C{node} answer at C{other_address} too (as itself): a host
        whose address is not the id it gives.
        """
        self.nodes[other_address] = node

    def add_many(self, count: int, first_port: int = 9001, **options: Any) -> list[TestNode]:
        return [self.add(first_port + i, **options) for i in range(count)]

    def mesh(self, nodes: Iterable[TestNode] | None = None) -> None:
        """
        Make every node a live peer of every other, as admission would.
        """
        members = list(self.nodes.values() if nodes is None else nodes)
        now = self.clock.seconds()
        for a in members:
            for b in members:
                if a is not b:
                    a.membership.heard_from(b.id, now, b.node.identity.incarnation)
        self.settle()

    # The HTTP client every node uses.

    def request(self, method: str, url: str, *, sender: str = "", **kwargs: Any) -> Deferred[Any]:
        """
        treq's C{request}, for a client outside the cluster or, with
        C{sender}, for that node.
        """
        parts = urlsplit(url)
        to = parts.netloc
        body = kwargs.get("json")
        if body is None and sender and kwargs.get("data"):  # a node's own JSON
            body = json.loads(kwargs["data"])
        self.sent.append(Sent(method, to, parts.path, body, sender))
        if len(self.sent) > self.max_requests:
            # A runaway retry loop: stop answering, so that the test fails
            # on its counts instead of spinning forever.
            return Deferred()
        if (
            to in self.down
            or sender in self.down
            or to not in self.nodes
            or frozenset((sender, to)) in self.links_down
        ):
            return fail(ConnectionRefusedError(to))
        return self.stub.request(method, url, **kwargs)

    # Faults.

    def cut(self, node_id: str) -> None:
        """
        Refuse every connection to or from C{node_id}, as for a dead or
        partitioned node.  Clients outside the cluster still reach it.
        """
        self.down.add(node_id)

    def heal(self, node_id: str) -> None:
        self.down.discard(node_id)

    def cut_link(self, a: str, b: str) -> None:
        """
        Refuse connections between C{a} and C{b} only: each still reaches
        every other node (a partial partition).
        """
        self.links_down.add(frozenset((a, b)))

    def hold(self, node_id: str) -> None:
        """
        Accept requests to C{node_id} but leave them unanswered until
        L{release} (or until the client's timeout cancels them).
        """
        self.held.setdefault(node_id, [])

    def release(self, node_id: str) -> int:
        """
        Answer every held request to C{node_id}; stop holding.

        @return: how many were answered (those still waiting for an answer).
        """
        waiting = self.held.pop(node_id, [])
        answered = 0
        for held in waiting:
            if held.abandoned:
                continue
            result = self.nodes[node_id].resource.render(held.request)
            if result is not NOT_DONE_YET:
                held.request.write(result)
                held.request.finish()
            answered += 1
        self.settle()
        return answered

    # Time.

    def settle(self, rounds: int = 10) -> None:
        """
        Deliver everything due now: pending bytes and zero-delay calls.
        """
        for _ in range(rounds):
            self.stub.flush()
            self.clock.advance(0)
        self.stub.flush()

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """
        Let C{seconds} pass in steps, settling after each.
        """
        steps = max(1, round(seconds / step))
        for _ in range(steps):
            self.clock.advance(seconds / steps)
            self.settle()

    def call(self, method: str, to: str, path: str, **kwargs: Any) -> Reply:
        """
        One request from a client outside the cluster, answered at once.
        """
        d = self.request(method, f"http://{to}{path}", **kwargs)
        self.settle()
        response = result_of(d)
        body = result_of(response.content())
        return Reply(response.code, response.headers, json.loads(body) if body else None)

    def requests(
        self, method: str | None = None, path: str | None = None, to: str | None = None
    ) -> list[Sent]:
        """
        The requests made so far, filtered.
        """
        return [
            s
            for s in self.sent
            if (method is None or s.method == method)
            and (path is None or s.path == path)
            and (to is None or s.to == to)
        ]


@dataclass(frozen=True)
class Reply:
    """
    An HTTP answer: status, headers and decoded JSON body.
    """

    code: int
    headers: Any
    json: Any

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


def told(saved: Deferred[None], done: Durable) -> None:
    """
    Tell C{done} what C{saved} (a fake store's save) comes to: a fake
    store's C{save_then}.
    """
    saved.addBoth(lambda result: done(result if isinstance(result, Failure) else None))


def break_store(store: Any, error: Exception) -> None:
    """
    Make every save of C{store} fail with C{error}.  It keeps something
    now: writes wait for it, and are told of the failure.
    """
    store.keeps_nothing = False
    store.save = lambda state, **_: fail(error)
    store.save_then = lambda state, done: done(Failure(error))


def _outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    return results[0]


def result_of(d: Deferred[Any]) -> Any:
    """
    The result of a Deferred that has fired; raises its failure if it failed.
    """
    outcome = _outcome(d)
    if isinstance(outcome, Failure):
        outcome.raiseException()
    return outcome


def failure_of(d: Deferred[Any]) -> Failure:
    """
    The failure of a Deferred that has failed; fails the test otherwise.
    """
    outcome = _outcome(d)
    assert isinstance(outcome, Failure), f"expected a failure, got {outcome!r}"
    return outcome


class ManualWorker:
    """
    A worker whose jobs wait until the test runs them, one transaction at a
    time, in order: like the writer thread, but the test says when it is done.
    """

    def __init__(self) -> None:
        self.running = False
        self.jobs: list[tuple[Callable[..., None], tuple[Any, ...], Deferred[None]]] = []
        self.transactions: list[list[tuple[str, str, int, int]]] = []

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def run(self, f: Callable[..., None], *args: Any) -> Deferred[None]:
        assert self.running, "a job for a stopped worker"
        d: Deferred[None] = Deferred()
        self.jobs.append((f, args, d))
        return d

    def run_next(self) -> None:
        """Run the oldest job: its transaction commits (or fails) now."""
        f, args, d = self.jobs.pop(0)
        self.transactions.append(sorted(args[0]))
        maybeDeferred(f, *args).chainDeferred(d)

    def run_all(self) -> None:
        while self.jobs:
            self.run_next()
