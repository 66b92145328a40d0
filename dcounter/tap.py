# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's two halves: L{Options} and L{makeService}.

makeService builds each part and attaches it to one L{logs.NodeService}, in
dependency order: the node and its store first (so it stops last, after the
final commit), then replication (which pushes the last writes on stop, once
the HTTP site has stopped taking them), the HTTP site, health checks and
discovery.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import ipaddress
import os
import platform
import re
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from random import Random
from typing import Any

from treq.client import HTTPClient
from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import IService, Service
from twisted.copyright import version as twisted_version
from twisted.internet import endpoints
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from dcounter import __version__, keyring, logs, wire
from dcounter.admission import Admission
from dcounter.api import CounterAPI, CounterSite
from dcounter.client import AgentRequests, BytesProducer, PeerClient
from dcounter.discovery import Discovery, DNSJoin, default_broadcasts
from dcounter.health import HealthChecker
from dcounter.membership import Membership
from dcounter.metrics import Metrics
from dcounter.node import KEY_WINDOW, MAX_KEYS, Node, NodeStateService
from dcounter.replication import Replicator
from dcounter.store import MemoryStore, SQLiteStore, Store, StoreError, ThreadWorker
from dcounter.swim import Swim

DEFAULT_PORT = 8088
#: The cluster size past which writes spread by gossip (benchmarks/scale.py).
GOSSIP_ABOVE = 1000
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


def _float(option: str, minimum: float) -> Any:
    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{option} takes a number of seconds, not {value!r}") from None
        if not number >= minimum:
            raise ValueError(f"{option} must be at least {minimum} seconds, not {value}")
        return number

    coerce.coerceDoc = f"At least {minimum}."  # type: ignore[attr-defined]
    return coerce


def _positive_int(option: str) -> Any:
    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{option} takes a whole number, not {value!r}") from None
        if number < 1:
            raise ValueError(f"{option} must be at least 1, not {value}")
        return number

    return coerce


def _port(value: str, option: str = "a port") -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"{option} takes a port number, not {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"{option} must be from 1 to 65535, not {value}")
    return port


def _port_option(option: str) -> Any:
    def coerce(value: str) -> int:
        return _port(value, option)

    return coerce


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise usage.UsageError(f"--broadcast takes IPv4 addresses like 10.0.0.255, not {value!r}") from None


def _choice(option: str, choices: Any) -> Any:
    def coerce(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{option} must be one of {', '.join(choices)}, not {value!r}")
        return value

    coerce.coerceDoc = f"One of {', '.join(choices)}."  # type: ignore[attr-defined]
    return coerce


#: The listen queue of a TCP endpoint given without C{backlog=}: Twisted's
#: default of 50 overflowed when the 99 peers of a node in a cluster of 100
#: connected to push a write each at once (the kernel drops the SYNs, and
#: the peers retry a second later).
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """
    C{description}, with C{backlog=LISTEN_BACKLOG} if it is a TCP endpoint
    that does not say.
    """
    fields = re.split(r"(?<!\\):", description)
    kind, positional = fields[0].lower(), [f for f in fields[1:] if "=" not in f]
    # Where a backlog goes positionally: tcp:PORT:INTERFACE:BACKLOG, tcp6:PORT:BACKLOG.
    slot = {"tcp": 2, "tcp6": 1}.get(kind)
    if slot is None or len(positional) > slot or any(f.startswith("backlog=") for f in fields[1:]):
        return description
    return f"{description}:backlog={LISTEN_BACKLOG}"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a dcounter node: a peer-to-peer distributed counter with an HTTP API, "
        "UDP broadcast discovery and health checks.  The node id is the advertised "
        "HOST:PORT."
    )
    optParameters = [
        ["port", "p", None, "HTTP port [default: $PORT, else 8088].", _port_option("--port")],
        [
            "listen",
            None,
            None,
            f"Endpoint to serve HTTP on [default: tcp:PORT]; TCP gets backlog={LISTEN_BACKLOG} unless given.",
        ],
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
        ["discovery-port", None, 7000, "UDP port for broadcast discovery.", _port_option("--discovery-port")],
        ["broadcast", None, None, "Comma-separated broadcast addresses [default: each interface's]."],
        [
            "announce-interval",
            None,
            2.0,
            "Seconds between announcements (jittered).",
            _float("--announce-interval", 0.05),
        ],
        [
            "data-dir",
            None,
            None,
            "Directory for the node's identity and counters [default: ./dcounter-data/PORT].",
        ],
        [
            "health-interval",
            None,
            0.5,
            "The SWIM protocol period: seconds between probes (one peer each period).",
            _float("--health-interval", 0.05),
        ],
        [
            "probe-timeout",
            None,
            2.0,
            "Seconds a peer has to answer a probe or a push (scaled up while this node is slow).",
            _float("--probe-timeout", 0.05),
        ],
        [
            "indirect-probes",
            None,
            3,
            "Peers asked to probe a peer that did not answer, before it is suspected.",
            _positive_int("--indirect-probes"),
        ],
        [
            "suspicion-mult",
            None,
            2.0,
            "A suspicion lasts at least this many periods times max(1, log10(cluster size)).",
            _float("--suspicion-mult", 1.0),
        ],
        [
            "wait-timeout",
            None,
            5.0,
            "Seconds a write with ?wait=N waits for N peers to hold it.",
            _float("--wait-timeout", 0.0),
        ],
        [
            "idempotency-window",
            None,
            KEY_WINDOW,
            "Seconds an Idempotency-Key is remembered, cluster-wide.",
            _float("--idempotency-window", 1.0),
        ],
        [
            "idempotency-max-keys",
            None,
            MAX_KEYS,
            "The most Idempotency-Keys remembered; beyond it the oldest are forgotten.",
            _positive_int("--idempotency-max-keys"),
        ],
        [
            "anti-entropy-interval",
            None,
            2.0,
            "Seconds between push-pulls with a random peer.",
            _float("--anti-entropy-interval", 0.05),
        ],
        [
            "stop-timeout",
            None,
            3.0,
            "Seconds a stopping node waits for its peers to take its last writes.",
            _float("--stop-timeout", 0.0),
        ],
        [
            "fold-after",
            None,
            60.0,
            "Seconds after start before this node folds the slots of its earlier incarnations "
            "(once every member it knows has caught up with it since).",
            _float("--fold-after", 0.0),
        ],
        [
            "push-fanout",
            None,
            3,
            "Past --gossip-above nodes: peers each flush of writes is pushed to, and that "
            "a node forwards what grew to.",
            _positive_int("--push-fanout"),
        ],
        [
            "gossip-above",
            None,
            GOSSIP_ABOVE,
            "In a cluster of more than this many nodes, writes spread by gossip to "
            "--push-fanout peers instead of being pushed to every peer.",
            _positive_int("--gossip-above"),
        ],
        [
            "log-format",
            None,
            "text",
            "Log lines as text or json (one JSON object a line).",
            _choice("--log-format", logs.FORMATS),
        ],
        [
            "log-level",
            None,
            "info",
            "Least level logged: debug, info, warn or error.",
            _choice("--log-level", list(logs.LEVELS)),
        ],
        [
            "max-counters",
            None,
            10000,
            "The most named counters (besides 'default') this node keeps; a write to one more is a 409.",
            _positive_int("--max-counters"),
        ],
    ]
    optFlags = [
        ["no-discovery", None, "Do not listen for or send UDP announcements."],
        ["in-memory", None, "Keep nothing on disk: every start is a new replica with no counters."],
        ["access-log", None, "Log every HTTP request."],
    ]
    optParameters += [
        [
            "secret-file",
            None,
            None,
            "File of cluster keys, one a line, after --secret and $DCOUNTER_SECRET; "
            "re-read on SIGHUP (key rotation).",
        ],
        [
            "admin-token",
            None,
            None,
            "Bearer token for /register, /remove-peer and the legacy /sync "
            "[default with a key: derived from the first key].",
        ],
        ["client-token", None, None, "Bearer token every client endpoint needs [default: none]."],
    ]

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self["secrets"] = []

    def opt_secret(self, value: str) -> None:
        """
        A cluster key (repeatable; also $DCOUNTER_SECRET): the first key
        signs, every key verifies.  With a key, strangers change nothing.
        """
        self["secrets"].append(value)

    def cluster_keys(self) -> list[str]:
        """
        Every key, in order: --secret, $DCOUNTER_SECRET, then --secret-file
        (read now: called again on SIGHUP).

        @raise usage.UsageError: if the file cannot be read or a key is bad.
        """
        keys = list(self["secrets"])
        if self.environ.get("DCOUNTER_SECRET"):
            keys.append(self.environ["DCOUNTER_SECRET"])
        if self["secret-file"] is not None:
            try:
                with open(self["secret-file"]) as f:
                    keys += keyring.keys_from_file(f.read())
            except (OSError, UnicodeDecodeError) as e:
                raise usage.UsageError(f"--secret-file: {e}") from None
        try:
            keyring.Keyring(keys)
        except keyring.KeyringError as e:
            raise usage.UsageError(str(e)) from None
        return keys

    def opt_version(self) -> None:
        """
        Print dcounter's version and exit.
        """
        print(f"dcounter {__version__} (Twisted {twisted_version}, Python {platform.python_version()})")
        raise SystemExit(0)

    def parseOptions(self, options: Any = None) -> None:
        """
        Under twistd, a usage error is one line naming the option, and the
        exit status 1, instead of twistd's whole help followed by the error.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            message = str(e).removeprefix("Parameter type enforcement failed: ")
            raise SystemExit(f"twistd dcounter: {message} (see twistd dcounter --help)") from None

    def postOptions(self) -> None:
        if self["port"] is None:
            try:
                self["port"] = _port(self.environ.get("PORT", str(DEFAULT_PORT)))
            except ValueError:
                raise usage.UsageError(
                    f"$PORT={self.environ['PORT']!r} is not a port number from 1 to 65535"
                ) from None
        port = self["port"]
        if self["listen"] is None:
            self["listen"] = f"tcp:{port}"
        self["listen"] = with_backlog(self["listen"])
        try:
            if self["advertise"] is None:
                self["advertise"] = f"{outbound_ip()}:{port}"
            self["advertise"] = wire.address(self["advertise"], "--advertise")
            if len(self["advertise"]) > wire.MAX_NODE_ID:
                raise wire.MalformedMessage(
                    f"--advertise must be at most {wire.MAX_NODE_ID} characters: peers refuse "
                    f"replica ids (ADDRESS/INCARNATION) of more than {wire.MAX_NAME}"
                )
            if self["peers"] is not None:
                peers, what = self["peers"], "--peers"
            else:
                peers, what = self.environ.get("PEERS", ""), "$PEERS"
            try:
                self["peers"] = [wire.address(p.strip(), "a peer") for p in peers.split(",") if p.strip()]
            except wire.MalformedMessage as e:
                raise wire.MalformedMessage(f"{what}={peers!r}: {e}") from None
            if self["join-dns"] is not None:
                name = self["join-dns"]
                self["join-dns"] = wire.split_address(wire.address(name if ":" in name else f"{name}:{port}"))
            broadcast = self["broadcast"]
            self["broadcast"] = (
                [_ipv4(b.strip()) for b in broadcast.split(",") if b.strip()] if broadcast else None
            )
            wire._token(self["cluster"], "--cluster")
        except wire.MalformedMessage as e:
            raise usage.UsageError(str(e)) from None
        self["keys"] = self.cluster_keys()
        for token in ("admin-token", "client-token"):
            if self[token] is not None and len(self[token]) < keyring.MIN_KEY_BYTES:
                raise usage.UsageError(f"--{token} must be at least {keyring.MIN_KEY_BYTES} characters")
        if self["in-memory"] and self["data-dir"] is not None:
            raise usage.UsageError("--data-dir and --in-memory cannot be used together")
        if not self["in-memory"] and self["data-dir"] is None:
            self["data-dir"] = os.path.join("dcounter-data", str(port))


def check_listen(description: str, reactor: Any) -> None:
    """
    Fail now, with one line, if the HTTP port cannot be bound: twistd binds
    it only after daemonizing, where an error becomes a long traceback in the
    foreground and a message cut at 100 bytes from a daemon.

    @raise SystemExit: the port is in use, or not ours to bind.
    """
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"dcounter: --listen {description!r} is not an endpoint: {e}") from None
    if not isinstance(endpoint, endpoints.TCP4ServerEndpoint | endpoints.TCP6ServerEndpoint):
        return  # unix sockets and the like: twistd reports those itself
    port, interface = endpoint._port, endpoint._interface
    family = socket.AF_INET6 if isinstance(endpoint, endpoints.TCP6ServerEndpoint) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's own listen does
        try:
            probe.bind((interface or ("::" if family == socket.AF_INET6 else ""), port))
        except OSError as e:
            where = f"{interface or 'all interfaces'} port {port}"
            if e.errno == errno.EADDRINUSE:
                why = "the port is in use (another dcounter node?); choose another with --port or --listen"
            elif e.errno == errno.EACCES:
                why = "permission denied (ports below 1024 need root)"
            else:
                why = e.strerror or str(e)
            raise SystemExit(f"dcounter: cannot listen on {where}: {why}") from None


#: Seconds between sweeps that forget expired idempotency keys.
KEY_EXPIRY_PERIOD = 60.0
#: FAULT TESTING ONLY: set to 1, a node kills itself (SIGKILL) right after a
#: keyed write is durable, before answering it or replicating it.
FAULT_CRASH_ENV = "DCOUNTER_FAULT_CRASH_AFTER_KEYED_COMMIT"


def _logged(f: Any, what: str) -> Any:
    """A timer's callable that logs its errors instead of ending the timer."""

    def run() -> None:
        try:
            f()
        except Exception:
            log.failure("failed " + what)

    return run


@dataclass
class Parts:
    """
    One node's parts, wired to each other: what L{makeService} runs as
    services, and what unit tests (L{tests.support}) drive on a Clock.
    """

    store: Store
    node: Node
    membership: Membership
    swim: Swim
    keys: keyring.Keyring
    guard: keyring.Guard
    client: PeerClient
    admission: Admission
    health: HealthChecker
    replicator: Replicator
    discovery: Discovery | None
    metrics: Metrics
    api: CounterAPI


#: Builds discovery for L{assemble}: (membership, consider, guard) -> Discovery.
DiscoveryFactory = Callable[[Membership, Callable[..., None], keyring.Guard], Any]


def assemble(
    options: Mapping[str, Any],
    store: Store,
    clock: Any,
    http: Any,
    *,
    replication_http: Any = None,
    metrics: Metrics | None = None,
    membership: Membership | None = None,
    discovery: DiscoveryFactory | None = None,
    rng: Random | None = None,
) -> Parts:
    """
    Wire one node's parts, with the settings of C{options} (L{Options}'
    keys), its C{store}, a C{clock} (the reactor, or a Clock) and C{http},
    what peer requests go through (treq's C{request}: an C{HTTPClient}, or
    a C{StubTreq}), and C{replication_http} what pushes and digests go
    through, if not C{http} (L{dcounter.client.AgentRequests}).  Nothing is
    started.
    """
    node_id = store.identity.node_id
    metrics = metrics if metrics is not None else Metrics()
    node = Node(
        store,
        options["cluster"],
        clock,
        key_window=options["idempotency-window"],
        max_keys=options["idempotency-max-keys"],
        max_counters=options["max-counters"],
    )
    membership = membership if membership is not None else Membership(node_id)
    interval, timeout = options["health-interval"], options["probe-timeout"]
    swim = Swim(
        membership,
        node.identity.incarnation,
        period=interval,
        probe_timeout=timeout,
        indirect=options["indirect-probes"],
        suspicion_mult=options["suspicion-mult"],
        rng=rng,
    )
    keys = keyring.Keyring(options["keys"])
    guard = keyring.Guard(keys, node_id)
    client = PeerClient(
        http, clock, timeout=timeout, metrics=metrics, guard=guard, replication_http=replication_http
    )
    admission = Admission(membership, options["cluster"], keyring=keys, retry_after=3 * interval)
    health = HealthChecker(
        node,
        membership,
        client,
        clock,
        interval=interval,
        seeds=options["peers"],
        metrics=metrics,
        admission=admission,
        swim=swim,
    )
    replicator = Replicator(
        node,
        membership,
        client,
        clock,
        health.consider,
        interval=options["anti-entropy-interval"],
        admission=admission,
        swim=swim,
        fold_after=options["fold-after"],
        stop_timeout=options["stop-timeout"],
        push_fanout=options["push-fanout"],
        gossip_above=options["gossip-above"],
        # A test's seeded choices: its own, not taken from SWIM's sequence.
        rng=None if rng is None else Random(node_id),
    )
    found = discovery(membership, health.consider, guard) if discovery is not None else None
    metrics.watch(node, membership, health, found, guard)
    api = CounterAPI(
        node,
        membership,
        health,
        replicator,
        found,
        metrics=metrics,
        guard=guard,
        admin_token=options["admin-token"],
        client_token=options["client-token"],
        wait_timeout=options["wait-timeout"],
        # FAULT TESTING ONLY (tests/faults): SIGKILL this process right after a
        # keyed write commits, before it is answered or replicated.
        crash_after_keyed_commit=os.environ.get(FAULT_CRASH_ENV) == "1",
    )
    return Parts(
        store, node, membership, swim, keys, guard, client, admission, health, replicator, found, metrics, api
    )


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor

        check_listen(options["listen"], reactor)  # under twistd: a real port
    node_id = options["advertise"]
    metrics = Metrics()
    try:
        store = (
            MemoryStore(node_id)
            if options["in-memory"]
            else SQLiteStore(
                options["data-dir"], node_id, ThreadWorker(reactor), clock=reactor, metrics=metrics
            )
        )
    except StoreError as e:
        raise SystemExit(f"dcounter: {e}") from None

    twistd = getattr(options, "parent", None)
    output = logs.twistd_output(twistd) if twistd is not None else None
    top = logs.NodeService(
        None if output is None else logs.observer(output, options["log-format"], options["log-level"])
    )

    def discovery(membership: Membership, consider: Callable[..., None], guard: keyring.Guard) -> Discovery:
        host = wire.split_address(node_id)[0]
        return Discovery(
            wire.Announcement(options["cluster"], node_id, node_id, store.identity.incarnation),
            membership,
            consider,
            reactor,
            port=options["discovery-port"],
            broadcasts=options["broadcast"] or default_broadcasts(host),
            interval=options["announce-interval"],
            guard=guard,
        )

    agent = _peer_agent(reactor, timeout=options["probe-timeout"])
    parts = assemble(
        options,
        store,
        reactor,
        HTTPClient(agent, data_to_body_producer=BytesProducer),
        replication_http=AgentRequests(agent),
        metrics=metrics,
        discovery=None if options["no-discovery"] else discovery,
    )
    node, health, replicator, api, keys = parts.node, parts.health, parts.replicator, parts.api, parts.keys
    discovery_service = parts.discovery
    NodeStateService(node).setServiceParent(top)
    if options["secret-file"] is not None:
        KeyReloader(options, keys, reactor).setServiceParent(top)
    interval = options["health-interval"]
    site = CounterSite(api, options["access-log"], reactor)
    replicator.setServiceParent(top)
    strports.service(options["listen"], site, reactor=reactor).setServiceParent(top)
    StopAnswering(api).setServiceParent(top)
    for service in health_services(health, reactor):
        service.setServiceParent(top)
    every(interval / 4, replicator.gossip, reactor).setServiceParent(top)
    if discovery_service is not None:
        discovery_service.setServiceParent(top)
    if options["join-dns"] is not None:
        name, port = options["join-dns"]
        DNSJoin(name, port, reactor.nameResolver, health.consider, reactor).setServiceParent(top)
    expiry = TimerService(KEY_EXPIRY_PERIOD, _logged(node.expire_keys, "forgetting idempotency keys"))
    expiry.setName("idempotency-key-expiry")
    expiry.setServiceParent(top)
    reactor.callWhenRunning(settle_heap)
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
            if discovery_service is None
            else f"on UDP {discovery_service.port}, broadcast to {', '.join(discovery_service.broadcasts)}"
        ),
        seeds=", ".join(options["peers"]) or "none",
    )
    if api.auth_mode == "off":
        log.warn(
            "auth is off: no cluster key is set, so any host that reaches this node can change its "
            "counters and peers (give --secret, --secret-file or $DCOUNTER_SECRET)"
        )
    else:
        log.info(
            "auth is on: {keys} cluster key(s), signing with {kid}; operator endpoints need {admin}; "
            "client endpoints need {client}",
            keys=len(keys.ids),
            kid=keys.signing_id or "none",
            admin="--admin-token" if options["admin-token"] else "the token derived from the first key",
            client="--client-token" if options["client-token"] else "no token",
        )
    return top


def settle_heap() -> None:
    """
    Once the node runs: collect what start-up left, set everything start-up
    made (modules, the loaded state) aside from the cyclic garbage collector
    (C{gc.freeze}), then trim the heap (L{trim_heap}).

    Why: with a data directory under C{wrk -c32}, writes waiting for their
    commit hold their requests and Deferreds, so the collector runs often
    (158 times a second), and its full collections, 12 in 10 s, went
    through the ~62,000 objects from start-up at 34 ms each: 409 ms of the
    616 ms the collector took in those 10 s (gc.callbacks).  Frozen, the
    full collections took 38 ms in all, and the collector 260 ms.  (A
    larger threshold for the youngest generation took it to 4 ms, but let
    an idle node's RSS creep up by 0.6 MB in 90 s: not done.)
    """
    gc.collect()
    gc.freeze()
    trim_heap()


def trim_heap() -> None:
    """
    Give back to the system what start-up allocated and freed (imports, the
    store's load), which glibc's malloc otherwise keeps: about 1.2 MB of a
    node's 60 at rest.  Does nothing on another C library.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def every(period: float, f: Any, clock: IReactorTime) -> TimerService:
    """
    A C{TimerService} calling C{f} every C{period} seconds on C{clock}
    (TimerService takes its clock as an attribute, not an argument).
    """
    timer = TimerService(period, f)
    timer.clock = clock
    return timer


def health_services(health: HealthChecker, clock: IReactorTime) -> list[Service]:
    """
    The health checker's admission of names heard of (L{AdmissionGate}),
    then its timers: a probe each protocol period, the end of suspicions
    checked four times a period.  All stop before the HTTP port and the
    replicator's last push.
    """
    return [
        AdmissionGate(health),
        every(health.interval, health.check_once, clock),
        every(health.interval / 4, health.tick, clock),
    ]


class StopAnswering(Service):
    """
    On stop, just before the HTTP port stops listening, the API answers
    every request 503: clients keep connections open, and a write taken on
    one while the node makes its last push could miss that push, and be
    lost with a node in memory.  Clients retry on another node.
    """

    def __init__(self, api: CounterAPI) -> None:
        self.api = api

    def startService(self) -> None:
        super().startService()
        self.api.stopping = False

    def stopService(self) -> Any:
        self.api.stopping = True
        return super().stopService()


class AdmissionGate(Service):
    """
    Names heard of start admission probes while this service runs
    (L{HealthChecker.stop_admitting}): a node that is stopping does not
    start probing the members named in the answers to its last pushes.
    """

    def __init__(self, health: HealthChecker) -> None:
        self.health = health

    def startService(self) -> None:
        super().startService()
        self.health.start_admitting()

    def stopService(self) -> Any:
        self.health.stop_admitting()
        return super().stopService()


class KeyReloader(Service):
    """
    Re-reads the keys (--secret-file above all) on SIGHUP: how keys rotate
    while the node runs.  A reload that fails, or that would leave a node
    that had keys with none, changes nothing and is logged.
    """

    def __init__(self, options: Options, keys: keyring.Keyring, reactor: Any) -> None:
        self.options = options
        self.keys = keys
        self.reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._signalled)

    def stopService(self) -> Any:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
        return super().stopService()

    def _signalled(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        try:
            new = self.options.cluster_keys()
        except usage.UsageError as e:
            log.error("keys not reloaded: {error}", error=e)
            return
        if self.keys.enabled and not new:
            log.error("keys not reloaded: no key left (auth cannot be turned off while running)")
            return
        self.keys.set(new)
        log.info(
            "keys reloaded: signing with {kid}, verifying {ids}", kid=self.keys.signing_id, ids=self.keys.ids
        )


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # one log line per new peer connection is noise


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


@implementer(IAgentEndpointFactory)
class PeerEndpoints:
    """
    Where the peer client connects: straight to an IPv4 address (a node id
    is one, mostly), else through the resolver.  Agent's own endpoints
    resolve even an address literal, on the reactor's thread pool: with
    many peers, that hand-off cost about a fifth of a node's CPU at start
    (py-spy, 10 nodes to a process in the scale benchmark).
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.reactor = reactor
        self.timeout = timeout

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("ascii")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return endpoints.HostnameEndpoint(self.reactor, uri.host, uri.port, timeout=self.timeout)
        return endpoints.TCP4ClientEndpoint(self.reactor, host, uri.port, timeout=self.timeout)


def _peer_agent(reactor: Any, timeout: float) -> Agent:
    """
    The agent for peer requests: persistent connections, so that pushes and
    probes reuse them, and a connect timeout like the request's.
    """
    pool = _QuietPool(reactor, persistent=True)
    return Agent.usingEndpointFactory(reactor, PeerEndpoints(reactor, timeout), pool=pool)
