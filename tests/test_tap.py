"""
The twistd plugin: Options parsing, makeService's composition on a memory
reactor (nothing listens), and the plugin's registration.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError

from dcounter import wire
from dcounter.api import CounterSite
from dcounter.discovery import Discovery, DNSJoin
from dcounter.health import HealthChecker
from dcounter.node import NodeStateService
from dcounter.replication import Replicator
from dcounter.service import StopInOrder
from dcounter.store import MemoryStore, SQLiteStore, StoreError
from dcounter.tap import AdmissionGate, Options, StopAnswering, makeService, settle_heap
from tests.support import failure_of

ADVERTISE = ["--advertise", "10.0.0.1:9100"]


def parse(*args: str, environ: dict[str, str] | None = None) -> Options:
    options = Options(environ={} if environ is None else environ)
    options.parseOptions(list(args))
    return options


# Options.


def test_defaults() -> None:
    """With no arguments and no environment: port 8088, no peers, discovery on."""
    o = parse(*ADVERTISE)
    assert o["port"] == 8088
    assert o["listen"] == "tcp:8088:backlog=1024"
    assert o["peers"] == []
    assert o["cluster"] == "dcounter"
    assert o["discovery-port"] == 7000
    assert o["broadcast"] is None
    assert o["join-dns"] is None
    assert o["data-dir"] == str(Path("dcounter-data") / "8088")
    assert not o["no-discovery"] and not o["in-memory"]
    assert o["health-interval"] == 0.5
    assert (o["probe-timeout"], o["indirect-probes"], o["suspicion-mult"]) == (2.0, 3, 2.0)
    assert o["announce-interval"] == 2.0
    assert o["anti-entropy-interval"] == 2.0


def test_port_and_peers_from_environment() -> None:
    """PORT and PEERS come from the environment, as in the original."""
    o = parse(*ADVERTISE, environ={"PORT": "9200", "PEERS": "10.0.0.2:9200, 10.0.0.3:9200,"})
    assert o["port"] == 9200
    assert o["listen"] == "tcp:9200:backlog=1024"
    assert o["peers"] == ["10.0.0.2:9200", "10.0.0.3:9200"]
    assert o["data-dir"] == str(Path("dcounter-data") / "9200")


def test_arguments_override_environment() -> None:
    """--port and --peers win over PORT and PEERS."""
    o = parse(*ADVERTISE, "--port", "9300", "--peers", "h:1", environ={"PORT": "9200", "PEERS": "x:2"})
    assert o["port"] == 9300
    assert o["peers"] == ["h:1"]


def test_default_advertise_is_outbound_ip_and_port() -> None:
    """Without --advertise, the node id is some IP and the port."""
    o = parse("--port", "9400")
    host, _, port = o["advertise"].rpartition(":")
    assert port == "9400"
    assert len(host.split(".")) == 4


def test_data_dir_and_in_memory_conflict() -> None:
    """--data-dir with --in-memory is a usage error."""
    with pytest.raises(UsageError, match="in-memory"):
        parse(*ADVERTISE, "--in-memory", "--data-dir", "/tmp/x")


def test_in_memory_has_no_data_dir() -> None:
    """--in-memory leaves data-dir unset."""
    assert parse(*ADVERTISE, "--in-memory")["data-dir"] is None


@pytest.mark.parametrize("port", ["0", "65536", "abc", "-1", ""])
def test_bad_port(port: str) -> None:
    """A bad --port is a usage error."""
    with pytest.raises(UsageError):
        parse(*ADVERTISE, "--port", port)


@pytest.mark.parametrize("port", ["0", "http", "99999"])
def test_bad_port_from_environment(port: str) -> None:
    """A bad PORT is a usage error naming it."""
    with pytest.raises(UsageError, match="PORT"):
        parse(*ADVERTISE, environ={"PORT": port})


@pytest.mark.parametrize(
    "value", ["nohost", "10.0.0.1", "10.0.0.1:0", "bad host:80", "h:65536", ":80", "h" * 97 + ".x:9001"]
)
def test_bad_advertise(value: str) -> None:
    """A bad --advertise is a usage error."""
    with pytest.raises(UsageError, match="advertise"):
        parse("--advertise", value)


def test_the_longest_advertise_makes_ids_peers_decode() -> None:
    """Its replica ids and fold ids (NODE/folded-INCARNATION) are tokens peers accept."""
    node = parse("--advertise", "h" * 96 + ".x:9001")["advertise"]
    assert len(node) == wire.MAX_NODE_ID
    for replica in (f"{node}/{'0' * 17}", f"{node}/folded-{'0' * 17}"):
        assert wire._token(replica, "a replica id") == replica


@pytest.mark.parametrize("peers", ["nohost", "h:1,h", "h:0", "evil example:80"])
def test_bad_peers(peers: str) -> None:
    """A bad entry in --peers (or PEERS) is a usage error."""
    with pytest.raises(UsageError, match="peer"):
        parse(*ADVERTISE, "--peers", peers)
    with pytest.raises(UsageError, match="peer"):
        parse(*ADVERTISE, environ={"PEERS": peers})


@pytest.mark.parametrize("value", ["300.1.1.1", "example.com", "10.0.0.255,nope"])
def test_bad_broadcast(value: str) -> None:
    """A --broadcast that is not a list of IPv4 addresses is a usage error."""
    with pytest.raises(UsageError, match="broadcast"):
        parse(*ADVERTISE, "--broadcast", value)


def test_broadcast_list() -> None:
    """--broadcast takes a comma-separated list."""
    o = parse(*ADVERTISE, "--broadcast", "10.0.0.255, 127.255.255.255")
    assert o["broadcast"] == ["10.0.0.255", "127.255.255.255"]


def test_join_dns_name() -> None:
    """--join-dns NAME uses the node's own port."""
    assert parse(*ADVERTISE, "--port", "9500", "--join-dns", "nodes")["join-dns"] == ("nodes", 9500)


def test_join_dns_name_and_port() -> None:
    """--join-dns NAME:PORT uses that port."""
    assert parse(*ADVERTISE, "--join-dns", "nodes.svc.local:8088")["join-dns"] == ("nodes.svc.local", 8088)


@pytest.mark.parametrize("value", ["bad name", "nodes:0", "nodes:x"])
def test_bad_join_dns(value: str) -> None:
    """A bad --join-dns is a usage error."""
    with pytest.raises(UsageError):
        parse(*ADVERTISE, "--join-dns", value)


@pytest.mark.parametrize("value", ["", "with space", "x" * 200])
def test_bad_cluster(value: str) -> None:
    """A bad --cluster is a usage error."""
    with pytest.raises(UsageError, match="cluster"):
        parse(*ADVERTISE, "--cluster", value)


def test_failure_detector_options_reach_the_parts() -> None:
    """--probe-timeout, --indirect-probes and --suspicion-mult are passed on."""
    service, _ = build(
        "--probe-timeout", "1.5", "--indirect-probes", "1", "--suspicion-mult", "4", "--wait-timeout", "2"
    )
    replicator = children(service)[1]
    assert replicator.client.timeout == 1.5
    swim = replicator.swim
    assert (swim.base_probe_timeout, swim.indirect, swim.suspicion_mult) == (1.5, 1, 4.0)


def test_failure_detector_defaults() -> None:
    """
    A probe has 2 s (saturated peers answer within that:
    benchmarks/false_suspicions.py); 3 indirect probes; a suspicion of
    2 periods of 0.5 s up to 10 nodes, so that a killed node leaves /peers
    within 3 s.
    """
    o = parse(*ADVERTISE)
    assert (o["probe-timeout"], o["indirect-probes"], o["suspicion-mult"], o["wait-timeout"]) == (
        2.0,
        3,
        2.0,
        5.0,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--suspicion-mult", "0.5"],
        ["--indirect-probes", "0"],
        ["--indirect-probes", "x"],
        ["--probe-timeout", "0"],
        ["--wait-timeout", "-1"],
        ["--stop-timeout", "-1"],
        ["--fold-after", "soon"],
    ],
)
def test_bad_failure_detector_options(args: list[str]) -> None:
    with pytest.raises(UsageError):
        parse(*ADVERTISE, *args)


@pytest.mark.parametrize("option", ["--health-interval", "--announce-interval", "--anti-entropy-interval"])
def test_bad_intervals(option: str) -> None:
    """Intervals must be numbers of at least 0.05 s."""
    for value in ("0", "-1", "soon", "nan"):
        with pytest.raises(UsageError):
            parse(*ADVERTISE, option, value)


# makeService.


def children(service: MultiService) -> list[Any]:
    return list(service)


def build(*args: str) -> tuple[MultiService, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    service = makeService(parse(*ADVERTISE, "--in-memory", *args), reactor=reactor)
    assert isinstance(service, MultiService)
    return service, reactor


def test_make_service_composition() -> None:
    """
    The node and its store first, then replication, HTTP, health checks and
    discovery, under a service that stops them one by one in reverse: HTTP
    stops taking connections before the last push, the store commits last.
    """
    service, _ = build()
    assert isinstance(service, StopInOrder)
    kinds = [type(s) for s in children(service)]
    assert kinds == [
        NodeStateService,
        Replicator,
        StreamServerEndpointService,
        StopAnswering,  # 503 on open connections, from just before HTTP stops
        AdmissionGate,  # stops before HTTP and the last push
        *[TimerService] * 3,  # probes, suspicions and gossip
        Discovery,
        TimerService,  # forgets idempotency keys past the window
    ]
    assert isinstance(children(service)[0].node.store, MemoryStore)
    assert not service.running  # built, not started: nothing listens


def test_make_service_without_discovery() -> None:
    """--no-discovery leaves the Discovery service out."""
    service, _ = build("--no-discovery")
    kinds = [type(s) for s in children(service)]
    assert Discovery not in kinds
    assert kinds == [
        NodeStateService,
        Replicator,
        StreamServerEndpointService,
        StopAnswering,
        AdmissionGate,
        *[TimerService] * 4,
    ]


def test_make_service_with_dns() -> None:
    """--join-dns adds a DNSJoin on the reactor's resolver."""
    service, reactor = build("--join-dns", "nodes:9100")
    (join,) = [s for s in children(service) if isinstance(s, DNSJoin)]
    assert (join.hostname, join.port) == ("nodes", 9100)
    assert join.resolver is reactor.nameResolver


def test_make_service_settings_reach_the_parts() -> None:
    """Intervals, seeds, cluster and discovery settings are passed on."""
    service, reactor = build(
        "--cluster",
        "blue",
        "--peers",
        "10.0.0.2:9100",
        "--health-interval",
        "0.25",
        "--probe-timeout",
        "0.7",
        "--indirect-probes",
        "2",
        "--suspicion-mult",
        "5",
        "--anti-entropy-interval",
        "3",
        "--discovery-port",
        "7100",
        "--broadcast",
        "10.0.0.255",
        "--announce-interval",
        "4",
        "--stop-timeout",
        "1.5",
        "--fold-after",
        "7",
    )
    _, replicator, _, stop_answering, gate, probes, ticks, gossip, discovery, _ = children(service)
    health = probes.call[0].__self__
    assert isinstance(health, HealthChecker)
    assert gate.health is health
    assert stop_answering.api.health_checker is health
    assert (probes.call[0], probes.step, probes.clock) == (health.check_once, 0.25, reactor)
    assert (ticks.call[0], ticks.step, ticks.clock) == (health.tick, 0.25 / 4, reactor)
    assert health.seeds == ["10.0.0.2:9100"]
    assert health.clock is reactor
    swim = health.swim
    assert (swim.period, swim.base_probe_timeout, swim.indirect, swim.suspicion_mult) == (0.25, 0.7, 2, 5.0)
    assert health.client.timeout == 0.7
    assert replicator.swim is swim
    assert (gossip.call[0], gossip.step) == (replicator.gossip, 0.25 / 4)
    assert replicator.step == 3.0
    assert (replicator.stop_timeout, replicator.fold_after) == (1.5, 7.0)
    assert replicator.node.cluster == "blue"
    assert replicator.node.node_id == "10.0.0.1:9100"
    assert (discovery.port, discovery.broadcasts, discovery.interval) == (7100, ["10.0.0.255"], 4.0)
    assert discovery.announcement.cluster == "blue"
    assert discovery.announcement.incarnation == replicator.node.identity.incarnation


def test_heap_settles_once_the_reactor_runs() -> None:
    """
    makeService leaves the process's garbage collector alone until the
    reactor runs (tests build nodes too); then start-up's objects are
    frozen out of its full collections.
    """
    service, reactor = build()
    assert settle_heap in [hook for hook, _, _ in reactor.whenRunningHooks]
    assert gc.get_freeze_count() == 0
    try:
        settle_heap()
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def test_make_service_listens_on_the_given_reactor() -> None:
    """The HTTP service listens through the reactor passed in, not the global one."""
    service, reactor = build("--listen", "tcp:9100:interface=127.0.0.1")
    http = children(service)[2]
    assert http.endpoint._reactor is reactor
    http.startService()
    ((port, factory, _, interface),) = reactor.tcpServers
    assert (port, interface) == (9100, "127.0.0.1")
    assert isinstance(factory, CounterSite)
    assert factory.reactor is reactor
    http.stopService()


def test_make_service_with_data_dir(tmp_path: Path) -> None:
    """
    Without --in-memory the store is SQLite in the data directory, opened
    when the service starts (twistd forks between makeService and that).
    """
    reactor = MemoryReactorClock()
    options = parse(*ADVERTISE, "--data-dir", str(tmp_path / "data"))
    service = makeService(options, reactor=reactor)
    store = children(service)[0].node.store
    assert isinstance(store, SQLiteStore)
    failure_of(store.save({"c": {"r": (1, 0)}})).trap(StoreError)  # not open yet
    store.stop()


def test_make_service_refuses_a_locked_data_dir(tmp_path: Path) -> None:
    """A data directory in use by another node stops makeService with a message."""
    reactor = MemoryReactorClock()
    options = parse(*ADVERTISE, "--data-dir", str(tmp_path))
    first = children(makeService(options, reactor=reactor))[0].node.store
    with pytest.raises(SystemExit, match="locked"):
        makeService(parse(*ADVERTISE, "--data-dir", str(tmp_path)), reactor=reactor)
    first.stop()


# The plugin.


def test_plugin_is_found() -> None:
    """twistd finds a service maker named dcounter that builds with dcounter.tap."""
    import twisted.plugins

    makers = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)}
    maker = makers["dcounter"]
    assert maker.options is Options
    assert maker.makeService is makeService
    assert maker.description


@pytest.mark.parametrize(
    "given, used",
    [
        ("tcp:9000", "tcp:9000:backlog=1024"),
        ("tcp6:9000:interface=\\:\\:1", "tcp6:9000:interface=\\:\\:1:backlog=1024"),
        ("tcp:9000:backlog=5", "tcp:9000:backlog=5"),
        ("tcp:9000:0.0.0.0:128", "tcp:9000:0.0.0.0:128"),
        ("tcp6:9000:128", "tcp6:9000:128"),
        ("unix:/tmp/dcounter.sock", "unix:/tmp/dcounter.sock"),
    ],
)
def test_a_tcp_listen_queue_is_long_enough_for_a_large_cluster(given: str, used: str) -> None:
    """Twisted's default backlog of 50 overflowed when 99 peers pushed at once."""
    o = Options()
    o.parseOptions(["--listen", given, "--advertise", "127.0.0.1:9000"])
    assert o["listen"] == used
