"""
Discovery on a Clock with fake UDP transports, and DNSJoin with a fake
resolver.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface import implementer

from dcounter import keyring, wire
from dcounter.discovery import LOOPBACK_BROADCAST, Discovery, DNSJoin, default_broadcasts
from dcounter.keyring import Guard, Keyring
from dcounter.membership import Membership, PeerState

CLUSTER = "dcounter"
ME = "10.0.0.1:8088"
OTHER = "10.0.0.2:8088"
SOURCE = ("10.0.0.2", 40000)


class FakeUDP:
    """A UDP port's transport that records what is written to it."""

    def __init__(self, port: int, protocol: Any, listen_multiple: bool = False) -> None:
        self.port = port
        self.protocol = protocol
        self.listen_multiple = listen_multiple
        self.writes: list[tuple[bytes, tuple[str, int]]] = []
        self.broadcast_allowed = False
        self.listening = True
        self.fail_with: Exception | None = None
        protocol.makeConnection(self)

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.writes.append((data, addr))

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self.broadcast_allowed = enabled

    def stopListening(self) -> None:
        self.listening = False


class UDPClock(Clock):
    """A Clock that can also listen on fake UDP ports."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakeUDP] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUDP:
        self.ports.append(FakeUDP(port, protocol))
        return self.ports[-1]

    def listenMulticast(
        self,
        port: int,
        protocol: Any,
        interface: str = "",
        maxPacketSize: int = 8192,
        listenMultiple: bool = False,
    ) -> FakeUDP:
        self.ports.append(FakeUDP(port, protocol, listenMultiple))
        return self.ports[-1]


class Extremes(random.Random):
    """An rng whose uniform() returns its low bound, then its high bound, in turn."""

    def __init__(self) -> None:
        super().__init__(0)
        self.high = False

    def uniform(self, a: float, b: float) -> float:
        self.high = not self.high
        return a if self.high else b


def announcement(
    node_id: str = OTHER,
    *,
    http: str | None = None,
    cluster: str = CLUSTER,
    incarnation: str = "inc2",
    kind: str = "announce",
) -> bytes:
    return wire.encode_announcement(wire.Announcement(cluster, node_id, http or node_id, incarnation, kind))


class Harness:
    def __init__(self, **options: Any) -> None:
        self.clock = UDPClock()
        self.membership = Membership(ME)
        self.considered: list[str] = []
        self.logged: list[dict[str, Any]] = []
        self.me = wire.Announcement(CLUSTER, ME, ME, "inc1")
        self.discovery = Discovery(
            self.me, self.membership, self.considered.append, self.clock, port=7000, **options
        )
        self.discovery.log = Logger(source=self.discovery, observer=self.logged.append)

    def start(self) -> None:
        self.discovery.startService()

    def attach_fakes(self) -> None:
        """Give the service fake sockets without starting it."""
        self.discovery.listener = FakeUDP(7000, _Ignore())
        self.discovery.sender = FakeUDP(0, _Ignore())

    @property
    def sent(self) -> list[tuple[bytes, tuple[str, int]]]:
        return self.discovery.sender.writes

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.logged if e["log_level"].name == "warn"]


class _Ignore:
    def makeConnection(self, transport: Any) -> None:
        pass


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.attach_fakes()
    return harness


# Sending.


def test_announces_at_start_to_each_broadcast_address() -> None:
    """Starting announces once to every broadcast address, from the sender socket."""
    h = Harness(broadcasts=["10.0.0.255", LOOPBACK_BROADCAST])
    h.start()
    listener, sender = h.clock.ports
    assert (listener.port, listener.listen_multiple) == (7000, True)
    assert sender.port == 0
    assert listener.broadcast_allowed and sender.broadcast_allowed
    assert [addr for _, addr in sender.writes] == [("10.0.0.255", 7000), (LOOPBACK_BROADCAST, 7000)]
    assert listener.writes == []
    for data, _ in sender.writes:
        assert wire.decode_announcement(data) == h.me
    assert h.discovery.last_sent == 0.0
    assert h.discovery.stats["sent"] == 2


def test_announces_periodically_within_jitter() -> None:
    """Announcements repeat every interval, plus or minus interval * jitter."""
    h = Harness(interval=2.0, jitter=0.25, rng=Extremes())
    h.start()
    assert len(h.sent) == 1
    h.clock.advance(1.49)
    assert len(h.sent) == 1
    h.clock.advance(0.01)  # interval - spread
    assert len(h.sent) == 2
    h.clock.advance(2.49)
    assert len(h.sent) == 2
    h.clock.advance(0.01)  # interval + spread
    assert len(h.sent) == 3


def test_jitter_spreads_announcements() -> None:
    """With a real rng, every gap lies in the jitter bounds, and the gaps vary."""
    h = Harness(interval=2.0, jitter=0.25, rng=random.Random(7))
    h.start()
    gaps: list[float] = []
    for _ in range(200):
        (next_call,) = h.clock.getDelayedCalls()
        gaps.append(next_call.getTime() - h.clock.seconds())
        h.clock.advance(gaps[-1])
    assert len(h.sent) == 201
    assert all(1.5 <= g <= 2.5 for g in gaps)
    assert max(gaps) - min(gaps) > 0.5


def test_announcements_slow_down_in_proportion_past_ten_peers() -> None:
    """
    Each socket hears every announcement: past ten live peers the interval
    grows with their number, so each node hears as many a second at 100 as
    at 10.
    """
    h = Harness(interval=2.0, jitter=0.0)
    h.start()
    for i in range(10):
        h.membership.heard_from(f"10.0.0.{i + 2}:8088", 0.0)
    assert h.discovery.period() == 2.0
    h.clock.advance(2.0)
    assert len(h.sent) == 2
    for i in range(10, 40):
        h.membership.heard_from(f"10.0.0.{i + 2}:8088", 0.0)
    assert h.discovery.period() == 8.0  # 40 peers: 4 x 2 s
    h.clock.advance(2.0)
    assert len(h.sent) == 3  # the announcement scheduled with 10 peers
    h.clock.advance(7.99)
    assert len(h.sent) == 3
    h.clock.advance(0.01)
    assert len(h.sent) == 4
    h.membership.mark("10.0.0.2:8088", PeerState.DEAD, 12.0)  # dead peers do not count
    assert h.discovery.period() == 7.8


def test_send_failure_does_not_stop_announcing(h: Harness) -> None:
    """A send that fails (network down) is skipped; the next round still goes."""
    h.discovery.sender.fail_with = OSError("network is unreachable")
    h.discovery.announce()
    assert h.discovery.stats["sent"] == 0
    h.discovery.sender.fail_with = None
    h.clock.advance(h.discovery.interval * 1.5)
    assert h.discovery.stats["sent"] == 1


def test_stop() -> None:
    """Stopping cancels the next announcement and closes both sockets."""
    h = Harness()
    h.start()
    listener, sender = h.clock.ports
    h.discovery.stopService()
    assert not listener.listening and not sender.listening
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(10)
    assert len(sender.writes) == 1


# Receiving.


def test_answers_announce_from_unknown_node(h: Harness) -> None:
    """An announce from an unknown node gets a unicast reply to its source, from the sender socket."""
    h.discovery.received(announcement(), SOURCE)
    assert len(h.sent) == 1
    data, addr = h.sent[0]
    assert addr == SOURCE
    reply = wire.decode_announcement(data)
    assert reply.kind == "reply"
    assert (reply.node_id, reply.http, reply.cluster, reply.incarnation) == (ME, ME, CLUSTER, "inc1")
    assert h.discovery.listener.writes == []
    assert h.discovery.stats["replies_sent"] == 1


def test_never_answers_a_reply(h: Harness) -> None:
    """A reply is never answered (no ping-pong), but its sender is considered."""
    h.discovery.received(announcement(kind="reply"), SOURCE)
    assert h.sent == []
    assert h.considered == [OTHER]


def test_considers_the_announced_http_address(h: Harness) -> None:
    """The candidate is the announced HTTP address, handed to consider()."""
    h.discovery.received(announcement(http="10.0.0.2:9999"), SOURCE)
    assert h.considered == ["10.0.0.2:9999"]
    assert h.membership.known() == []  # only considered, not admitted
    assert h.discovery.last_received == {"node_id": OTHER, "from": "10.0.0.2:40000", "at": 0.0}


def test_known_peer_is_not_answered(h: Harness) -> None:
    """An alive peer of the same incarnation is neither answered nor considered."""
    h.membership.heard_from(OTHER, 0.0, "inc2")
    h.discovery.received(announcement(), SOURCE)
    assert h.sent == [] and h.considered == []


def test_restarted_peer_is_answered(h: Harness) -> None:
    """A known peer with a new incarnation (it restarted) is answered and considered."""
    h.membership.heard_from(OTHER, 0.0, "old")
    h.discovery.received(announcement(), SOURCE)
    assert len(h.sent) == 1 and h.considered == [OTHER]


def test_dead_peer_is_answered(h: Harness) -> None:
    """A dead peer announcing itself is answered and considered."""
    h.membership.heard_from(OTHER, 0.0, "inc2")
    h.membership.mark(OTHER, PeerState.DEAD, 0.0)
    h.discovery.received(announcement(), SOURCE)
    assert len(h.sent) == 1 and h.considered == [OTHER]


def test_ignores_its_own_announcement(h: Harness) -> None:
    """Our own broadcast, looped back, is not answered or considered."""
    h.discovery.received(wire.encode_announcement(h.me), ("10.0.0.1", 7000))
    assert h.sent == [] and h.considered == []
    assert h.discovery.last_received is None


BAD_DATAGRAMS = [
    random.Random(0).randbytes(200),
    b"",
    b"{}",
    b"[1, 2]",
    b"evil.example:6666",
    b'{"dcounter": true, "kind": "announce", "cluster": "dcounter", "node_id": "10.0.0.2:1",'
    b' "http": "10.0.0.2:1", "incarnation": "x"}',
    announcement().replace(b'"announce"', b'"flood"'),
    announcement().replace(b'"10.0.0.2:8088"', b'"10.0.0.2:0"'),
    json.dumps({"dcounter": 1, "kind": "announce", "pad": "x" * 2000}).encode(),
    announcement()[:-1] + b"," + b" " * 1100 + b"}",
]


@pytest.mark.parametrize("data", BAD_DATAGRAMS)
def test_drops_bad_datagrams(h: Harness, data: bytes) -> None:
    """Undecodable, invalid and oversized datagrams are counted and dropped."""
    h.discovery.received(data, SOURCE)
    assert h.discovery.stats["malformed"] == 1
    assert h.considered == [] and h.sent == []
    assert len(h.warnings()) == 1


def test_drops_other_clusters(h: Harness) -> None:
    """Another cluster's announcements are counted and dropped, never answered."""
    h.discovery.received(announcement(cluster="other"), SOURCE)
    assert h.discovery.stats["other_cluster"] == 1
    assert h.discovery.stats["malformed"] == 0
    assert h.considered == [] and h.sent == []


def test_drops_are_logged_once_per_source_per_minute(h: Harness) -> None:
    """A source that keeps sending junk is logged once a minute, each source apart."""
    for _ in range(5):
        h.discovery.received(b"junk", SOURCE)
        h.discovery.received(announcement(cluster="other"), SOURCE)
    assert len(h.warnings()) == 1
    h.discovery.received(b"junk", ("10.0.0.3", 7000))
    assert len(h.warnings()) == 2
    h.clock.advance(59)
    h.discovery.received(b"junk", SOURCE)
    assert len(h.warnings()) == 2
    h.clock.advance(1)
    h.discovery.received(b"junk", SOURCE)
    assert len(h.warnings()) == 3
    assert h.discovery.stats["received"] == 13
    assert h.discovery.stats["malformed"] == 8
    assert h.discovery.stats["other_cluster"] == 5


def test_handler_never_raises(h: Harness) -> None:
    """An error while handling a datagram is logged, not raised."""

    def broken(address: str) -> None:
        raise RuntimeError("boom")

    h.discovery.consider = broken
    h.discovery.received(announcement(), SOURCE)  # does not raise
    assert any(e.get("log_failure") for e in h.logged)
    h.discovery.consider = h.considered.append
    h.discovery.received(announcement(node_id="10.0.0.3:8088"), ("10.0.0.3", 1))
    assert h.considered == ["10.0.0.3:8088"]


def test_transport_hands_datagrams_to_the_service() -> None:
    """Datagrams on either socket reach the same handler."""
    h = Harness()
    h.start()
    listener, sender = h.clock.ports
    listener.protocol.datagramReceived(announcement(), SOURCE)
    sender.protocol.datagramReceived(announcement(node_id="10.0.0.3:8088", kind="reply"), SOURCE)
    assert h.considered == [OTHER, "10.0.0.3:8088"]


def test_info(h: Harness) -> None:
    """info() reports settings, the last announcements and the counters."""
    h.discovery.announce()
    h.discovery.received(b"junk", SOURCE)
    info = h.discovery.info()
    assert info["discovery_port"] == 7000
    assert info["broadcast"] == [LOOPBACK_BROADCAST]
    assert info["last_announce_sent"] == 0.0
    assert info["datagrams"]["malformed"] == 1
    json.dumps(info)  # JSON-ready


def test_default_broadcasts_on_loopback() -> None:
    """A node advertised on loopback announces to loopback's broadcast address only."""
    assert default_broadcasts("127.0.0.1") == ["127.255.255.255"]
    assert default_broadcasts("127.0.0.5") == ["127.255.255.255"]
    assert default_broadcasts("localhost") == ["127.255.255.255"]


def test_default_broadcasts_elsewhere() -> None:
    """Any other node gets at least one IPv4 broadcast address."""
    found = default_broadcasts("10.1.2.3")
    assert found
    for address in found:
        assert len(address.split(".")) == 4


# DNS.


@implementer(IHostnameResolver)
class FakeResolver:
    """Answers from a dict name -> addresses; an address list may be an exception to raise."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    def resolveHostName(
        self,
        receiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        self.asked.append((hostName, portNumber))
        answer = self.answers.get(hostName, [])
        if isinstance(answer, Exception):
            raise answer
        receiver.resolutionBegan(None)
        for host in answer:
            kind = IPv6Address if ":" in host else IPv4Address
            receiver.addressResolved(kind("TCP", host, portNumber))
        receiver.resolutionComplete()
        return receiver


def dns_join(answers: dict[str, Any]) -> tuple[DNSJoin, FakeResolver, list[str], Clock]:
    clock = Clock()
    resolver = FakeResolver(answers)
    considered: list[str] = []
    join = DNSJoin("nodes", 8088, resolver, considered.append, clock, interval=2.0)
    return join, resolver, considered, clock


def test_dns_considers_every_ipv4_address() -> None:
    """Every IPv4 address found is considered at the port; IPv6 ones are skipped."""
    join, resolver, considered, _ = dns_join({"nodes": ["10.0.0.3", "10.0.0.2", "fe80::1", "10.0.0.3"]})
    join.resolve_once()
    assert resolver.asked == [("nodes", 8088)]
    assert considered == ["10.0.0.2:8088", "10.0.0.3:8088"]
    assert join.last == ["10.0.0.2:8088", "10.0.0.3:8088"]


def test_dns_keeps_looping_through_failures() -> None:
    """A name that does not resolve yet is retried every interval until it does."""
    join, resolver, considered, clock = dns_join({})
    join.startService()
    clock.advance(2.0)
    assert considered == [] and join.last == []
    resolver.answers["nodes"] = ["10.0.0.2"]
    clock.advance(2.0)
    assert considered == ["10.0.0.2:8088"]
    assert len(resolver.asked) == 3
    join.stopService()
    clock.advance(10)
    assert len(resolver.asked) == 3


def test_dns_survives_a_resolver_error() -> None:
    """A resolver that raises is logged; the loop goes on."""
    join, resolver, considered, clock = dns_join({"nodes": OSError("resolver broken")})
    logged: list[dict[str, Any]] = []
    join.log = Logger(source=join, observer=logged.append)
    join.startService()
    assert logged
    resolver.answers["nodes"] = ["10.0.0.2"]
    clock.advance(2.0)
    assert considered == ["10.0.0.2:8088"]
    join.stopService()


# With a cluster key.

KEY = "cluster-key-0123456789"


def keyed_harness(keys: tuple[str, ...] = (KEY,)) -> Harness:
    harness = Harness(guard=Guard(Keyring(list(keys)), ME))
    harness.attach_fakes()
    return harness


def signed(data: bytes, key: str = KEY, sender: str = OTHER, now: float = 0.0) -> bytes:
    guard = Guard(Keyring([key]), sender)
    return wire.encode_signed_datagram(guard.seal(keyring.datagram_context(), data, now), data)


def test_keyed_announcements_are_signed() -> None:
    h = keyed_harness()
    h.discovery.announce()
    (data, _), *_ = h.sent
    auth, payload = wire.decode_signed_datagram(data)
    assert auth is not None and auth.sender == ME
    assert wire.decode_announcement(payload).node_id == ME


def test_keyed_discovery_takes_a_signed_announcement_once() -> None:
    h = keyed_harness()
    data = signed(announcement())
    h.discovery.received(data, SOURCE)
    assert h.considered == [OTHER]
    replies = [wire.decode_signed_datagram(d)[0] for d, _ in h.sent]
    assert replies and all(r is not None for r in replies)  # the reply is signed too
    h.discovery.received(data, SOURCE)  # replayed
    assert h.considered == [OTHER]
    assert h.discovery.guard.dropped["udp"] == {"replayed": 1}


@pytest.mark.parametrize(
    "data, reason",
    [
        (announcement(), "unsigned"),
        (signed(announcement(), key="another-key-0123456789"), "unknown_key"),
        (signed(announcement(), now=100.0), "stale"),
        (signed(announcement()).replace(b'"inc2"', b'"inc3"'), "bad_mac"),
        (signed(announcement(), sender="10.0.0.3:8088"), "malformed"),  # signed by one, in another's name
        (wire.SIGNED_DATAGRAM + b"junk", "malformed"),
    ],
)
def test_keyed_discovery_drops_by_reason(data: bytes, reason: str) -> None:
    h = keyed_harness()
    h.discovery.received(data, SOURCE)
    assert h.considered == [] and h.sent == []
    assert h.discovery.guard.dropped["udp"] == {reason: 1}
