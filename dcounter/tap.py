# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's two halves: L{Options} and L{makeService}.

makeService builds each part and attaches it to one MultiService, in
dependency order: the store first (so it stops last, after the final
commit), then the HTTP site, replication, health checks and discovery.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from treq.client import HTTPClient
from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from dcounter import wire
from dcounter.api import CounterAPI, CounterSite
from dcounter.client import PeerClient
from dcounter.discovery import Discovery, DNSJoin, default_broadcasts
from dcounter.health import HealthChecker
from dcounter.membership import Membership
from dcounter.metrics import Metrics
from dcounter.node import Node
from dcounter.replication import Replicator
from dcounter.store import MemoryStore, SQLiteStore, StoreError, StoreService

DEFAULT_PORT = 8088
log = Logger()


def outbound_ip() -> str:
    """
    The address this host uses to reach the rest of the network, as the
    original chose its node id.  Connecting a UDP socket sends nothing: it
    only asks the kernel for a route.  A host with no route gets 127.0.0.1.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never contacted
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _float(minimum: float) -> Any:
    def coerce(value: str) -> float:
        number = float(value)
        if not number >= minimum:
            raise ValueError(f"must be at least {minimum}")
        return number

    coerce.coerceDoc = f"At least {minimum}."  # type: ignore[attr-defined]
    return coerce


def _port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError("must be from 1 to 65535")
    return port


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a dcounter node: a peer-to-peer distributed counter with an HTTP API, "
        "UDP broadcast discovery and health checks.  The node id is the advertised "
        "HOST:PORT."
    )
    optParameters = [
        ["port", "p", None, "HTTP port [default: $PORT, else 8088].", _port],
        ["listen", None, None, "Endpoint to serve HTTP on [default: tcp:PORT]."],
        [
            "advertise",
            None,
            None,
            "HOST:PORT that peers reach this node at; it is the node id "
            "[default: this host's outbound IP and PORT].",
        ],
        ["peers", None, None, "Comma-separated HOST:PORT seed peers [default: $PEERS]."],
        ["join-dns", None, None, "NAME[:PORT]: re-resolve NAME every few seconds, admit every address."],
        ["cluster", None, "dcounter", "Cluster name: nodes of other clusters are ignored."],
        ["discovery-port", None, 7000, "UDP port for broadcast discovery.", _port],
        ["broadcast", None, None, "Comma-separated broadcast addresses [default: each interface's]."],
        ["announce-interval", None, 2.0, "Seconds between announcements (jittered).", _float(0.05)],
        [
            "data-dir",
            None,
            None,
            "Directory for the node's identity and counters [default: ./dcounter-data/PORT].",
        ],
        ["health-interval", None, 1.0, "Seconds between probes of each peer.", _float(0.05)],
        ["anti-entropy-interval", None, 2.0, "Seconds between push-pulls with a random peer.", _float(0.05)],
    ]
    optFlags = [
        ["no-discovery", None, "Do not listen for or send UDP announcements."],
        ["in-memory", None, "Keep nothing on disk: every start is a new replica with no counters."],
        ["access-log", None, "Log every HTTP request."],
    ]

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ

    def postOptions(self) -> None:
        if self["port"] is None:
            try:
                self["port"] = _port(self.environ.get("PORT", str(DEFAULT_PORT)))
            except ValueError:
                raise usage.UsageError(f"PORT={self.environ['PORT']!r} is not a port number") from None
        port = self["port"]
        if self["listen"] is None:
            self["listen"] = f"tcp:{port}"
        try:
            if self["advertise"] is None:
                self["advertise"] = f"{outbound_ip()}:{port}"
            self["advertise"] = wire.address(self["advertise"], "--advertise")
            peers = self["peers"] if self["peers"] is not None else self.environ.get("PEERS", "")
            self["peers"] = [wire.address(p.strip(), "a peer") for p in peers.split(",") if p.strip()]
            if self["join-dns"] is not None:
                name = self["join-dns"]
                self["join-dns"] = wire.split_address(wire.address(name if ":" in name else f"{name}:{port}"))
            broadcast = self["broadcast"]
            self["broadcast"] = [b.strip() for b in broadcast.split(",") if b.strip()] if broadcast else None
            for address in self["broadcast"] or []:
                socket.inet_aton(address)
            wire._token(self["cluster"], "--cluster")
        except wire.MalformedMessage as e:
            raise usage.UsageError(str(e)) from None
        except OSError:
            raise usage.UsageError("--broadcast takes IPv4 addresses") from None
        if self["in-memory"] and self["data-dir"] is not None:
            raise usage.UsageError("--data-dir and --in-memory cannot be used together")
        if not self["in-memory"] and self["data-dir"] is None:
            self["data-dir"] = os.path.join("dcounter-data", str(port))


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    node_id = options["advertise"]
    metrics = Metrics()
    try:
        store = (
            MemoryStore(node_id)
            if options["in-memory"]
            else SQLiteStore(options["data-dir"], node_id, reactor, metrics=metrics)
        )
    except StoreError as e:
        raise SystemExit(f"dcounter: {e}") from None

    top = MultiService()
    StoreService(store).setServiceParent(top)

    node = Node(store, options["cluster"], reactor)
    membership = Membership(node_id)
    interval = options["health-interval"]
    client = PeerClient(
        _http_client(reactor, timeout=interval * 0.75), reactor, timeout=interval * 0.75, metrics=metrics
    )
    health = HealthChecker(
        node, membership, client, reactor, interval=interval, seeds=options["peers"], metrics=metrics
    )
    replicator = Replicator(
        node, membership, client, reactor, health.consider, interval=options["anti-entropy-interval"]
    )
    discovery = None
    if not options["no-discovery"]:
        host = wire.split_address(node_id)[0]
        discovery = Discovery(
            wire.Announcement(options["cluster"], node_id, node_id, node.identity.incarnation),
            membership,
            health.consider,
            reactor,
            port=options["discovery-port"],
            broadcasts=options["broadcast"] or default_broadcasts(host),
            interval=options["announce-interval"],
        )
    metrics.watch(node, membership, health, discovery)
    api = CounterAPI(node, membership, health, replicator, discovery, metrics=metrics)
    site = CounterSite(api, options["access-log"], reactor)
    strports.service(options["listen"], site, reactor=reactor).setServiceParent(top)
    replicator.setServiceParent(top)
    health.setServiceParent(top)
    if discovery is not None:
        discovery.setServiceParent(top)
    if options["join-dns"] is not None:
        name, port = options["join-dns"]
        DNSJoin(name, port, reactor.nameResolver, health.consider, reactor, self_id=node_id).setServiceParent(
            top
        )
    log.info(
        "dcounter node {node_id} (replica {replica}) of cluster {cluster}: HTTP on {listen}, "
        "{data}, discovery {discovery}, seeds {seeds}",
        node_id=node_id,
        replica=node.replica,
        cluster=options["cluster"],
        listen=options["listen"],
        data="in memory" if options["in-memory"] else f"data in {options['data-dir']}",
        discovery=(
            "off"
            if discovery is None
            else f"on UDP {discovery.port}, broadcast to {', '.join(discovery.broadcasts)}"
        ),
        seeds=", ".join(options["peers"]) or "none",
    )
    return top


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # one log line per new peer connection is noise


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


def _http_client(reactor: Any, timeout: float) -> HTTPClient:
    """
    The client for peer requests: persistent connections, so that pushes and
    probes reuse them, and a connect timeout like the request's.
    """
    pool = _QuietPool(reactor, persistent=True)
    return HTTPClient(Agent(reactor, connectTimeout=timeout, pool=pool))
