# -*- test-case-name: tests.test_discovery -*-
"""
Discovery: how nodes find each other without being told.

UDP broadcast, for LANs and compose networks: every node listens on the shared
discovery port (several nodes on one host share it through SO_REUSEPORT), and
announces itself at start and then every C{interval} seconds, with jitter, to
each broadcast address.  Announcements are sent from a second socket of the
node's own, on an ephemeral port, so that a node hearing an announcement from
a node it does not know can answer it at once by unicast, and the answer
reaches that node and no other: a mesh forms in one round trip.

A name heard this way is only a candidate: it becomes a peer once it answers
an HTTP probe as itself (L{dcounter.health.HealthChecker.consider}).

DNS, for networks that carry no broadcast (cloud VPCs): L{DNSJoin} resolves a
name that maps to many addresses (a compose service, a Kubernetes headless
service) every few seconds and considers every address it finds.
"""

from __future__ import annotations

import fcntl
import random
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from dcounter import keyring, wire
from dcounter.membership import Membership, PeerState

LOOPBACK_BROADCAST = "127.255.255.255"
_SIOCGIFFLAGS = 0x8913
_SIOCGIFBRDADDR = 0x8919
_IFF_UP = 0x1
_IFF_BROADCAST = 0x2


def interface_broadcasts() -> list[str]:
    """
    The IPv4 broadcast address of every interface that is up and has one
    (Linux).  Loopback has none.
    """
    found: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return found
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            ifreq = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack("H", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq)[16:18])[0]
                if not (flags & _IFF_UP and flags & _IFF_BROADCAST):
                    continue
                address = socket.inet_ntoa(fcntl.ioctl(s, _SIOCGIFBRDADDR, ifreq)[20:24])
            except OSError:
                continue
            if address != "0.0.0.0" and address not in found:
                found.append(address)
    return found


def default_broadcasts(advertised_host: str) -> list[str]:
    """
    Where to announce when not told.  A node advertised on loopback can only
    have peers on this host: loopback's broadcast address alone.  Any other
    node: every interface's broadcast address (loopback's if there is none).
    """
    if advertised_host.startswith("127.") or advertised_host == "localhost":
        return [LOOPBACK_BROADCAST]
    return interface_broadcasts() or [LOOPBACK_BROADCAST]


class _DiscoverySocket(DatagramProtocol):
    """
    A thin transport: hands every datagram to the controller.
    """

    noisy = False

    def __init__(self, received: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._received = received

    def startProtocol(self) -> None:
        assert self.transport is not None
        self.transport.setBroadcastAllowed(True)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._received(datagram, addr)


class Discovery(Service):
    """
    UDP broadcast discovery: announces this node, hears others.
    """

    log = Logger()

    #: A source that keeps sending bad datagrams is logged once per this.
    LOG_EVERY = 60.0

    def __init__(
        self,
        announcement: wire.Announcement,
        membership: Membership,
        consider: Callable[[str], None],
        reactor: Any,
        *,
        port: int = 7000,
        broadcasts: Iterable[str] = (LOOPBACK_BROADCAST,),
        interval: float = 2.0,
        jitter: float = 0.25,
        rng: random.Random | None = None,
        guard: keyring.Guard | None = None,
    ) -> None:
        """
        @param guard: once its keyring holds a key, every datagram sent is
            signed, and every one received must be, validly, or is dropped.
        """
        self.guard = guard or keyring.Guard(keyring.Keyring(), announcement.node_id)
        self.announcement = announcement
        self.membership = membership
        self.consider = consider
        self.reactor = reactor  # for time, and for the UDP sockets
        self.port = port
        self.broadcasts = list(broadcasts)
        self.interval = interval
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.listener: Any = None  # the shared port's transport
        self.sender: Any = None  # our own ephemeral socket's transport
        self._next: Any = None
        self._last_logged: dict[str, float] = {}
        self.last_sent: float | None = None
        self.last_received: dict[str, Any] | None = None
        self.stats = {"received": 0, "malformed": 0, "other_cluster": 0, "replies_sent": 0, "sent": 0}

    # Lifecycle.

    def startService(self) -> None:
        super().startService()
        self.listener = self.reactor.listenMulticast(
            self.port, _DiscoverySocket(self.received), listenMultiple=True
        )
        self.sender = self.reactor.listenUDP(0, _DiscoverySocket(self.received))
        self.announce()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        sockets = [s for s in (self.listener, self.sender) if s is not None]
        self.listener = self.sender = None
        return gatherResults([maybeDeferred(s.stopListening) for s in sockets]).addCallback(lambda _: None)

    # Sending.

    def announce(self) -> None:
        """
        Broadcast our announcement now, and schedule the next.  Never raises.
        """
        try:
            data = self._encode(self.announcement)
            for address in self.broadcasts:
                self._send(data, (address, self.port))
            self.last_sent = self.reactor.seconds()
        except Exception:
            self.log.failure("announcement failed")
        period = self.period()
        spread = period * self.jitter
        self._next = self.reactor.callLater(period + self._rng.uniform(-spread, spread), self.announce)

    #: Past this many live peers, announcements slow down in proportion.
    ANNOUNCERS = 10

    def period(self) -> float:
        """
        Seconds until the next announcement (before jitter): C{interval},
        times N / C{ANNOUNCERS} in a cluster of N > C{ANNOUNCERS} live
        peers.  Every socket on the discovery port hears every announcement,
        so at a fixed interval each node would hear N / interval a second
        and the cluster N^2 / interval (5,000 datagrams a second at 100
        nodes); this way each hears about C{ANNOUNCERS} / interval, whatever
        N.  A node that starts still announces at once, and every node that
        does not know it answers by unicast: joining takes one round trip.
        """
        return self.interval * max(1.0, len(self.membership.live()) / self.ANNOUNCERS)

    def _encode(self, announcement: wire.Announcement) -> bytes:
        data = wire.encode_announcement(announcement)
        if not self.guard.enabled:
            return data
        auth = self.guard.seal(keyring.datagram_context(), data, self.reactor.seconds())
        return wire.encode_signed_datagram(auth, data)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sender.write(data, addr)
            self.stats["sent"] += 1
        except Exception as e:  # a closed or unreachable network: try next round
            self.log.debug("could not send to {addr}: {error}", addr=addr, error=e)

    # Receiving.

    def received(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """
        One datagram from C{addr}.  Never raises: whatever it holds, it is
        handled or dropped.
        """
        try:
            self._received(datagram, addr)
        except Exception:
            self.log.failure("error handling a datagram from {addr}", addr=addr)

    def _received(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.stats["received"] += 1
        try:
            auth, payload = wire.decode_signed_datagram(datagram)
            if self.guard.enabled:
                self.guard.check("udp", keyring.datagram_context(), auth, payload, self.reactor.seconds())
            a = wire.decode_announcement(payload)
            if auth is not None and auth.sender != a.node_id:
                raise wire.MalformedMessage("signed by one node in the name of another")
        except keyring.Refused as e:
            self._drop(addr, f"datagram refused: {e.reason}")
            return
        except wire.MalformedMessage as e:
            self.stats["malformed"] += 1
            if self.guard.enabled:
                self.guard.refused("udp", "malformed")
            self._drop(addr, f"invalid datagram: {e}")
            return
        if a.cluster != self.announcement.cluster:
            self.stats["other_cluster"] += 1
            self._drop(addr, f"announcement for cluster {a.cluster!r}")
            return
        if a.node_id == self.announcement.node_id:
            return  # our own broadcast, looped back
        self.last_received = {
            "node_id": a.node_id,
            "from": f"{addr[0]}:{addr[1]}",
            "at": self.reactor.seconds(),
        }
        peer = self.membership.get(a.node_id)
        new = peer is None or peer.state is PeerState.DEAD or peer.incarnation != a.incarnation
        if a.kind == "announce" and new:
            reply = wire.Announcement(**{**self.announcement.__dict__, "kind": "reply"})
            self._send(self._encode(reply), addr)
            self.stats["replies_sent"] += 1
        if new:
            self.consider(a.http)

    def _drop(self, addr: tuple[str, int], why: str) -> None:
        now = self.reactor.seconds()
        source = addr[0]
        if now - self._last_logged.get(source, -self.LOG_EVERY) >= self.LOG_EVERY:
            self._last_logged[source] = now
            if len(self._last_logged) > 10000:
                self._last_logged.clear()
            self.log.warn("dropped datagram from {source}: {why}", source=source, why=why)

    def info(self) -> dict[str, Any]:
        return {
            "discovery_port": self.port,
            "broadcast": self.broadcasts,
            "announce_interval": self.interval,
            "last_announce_sent": self.last_sent,
            "last_announce_received": self.last_received,
            "datagrams": dict(self.stats),
        }


@implementer(IResolutionReceiver)
class _Addresses:
    def __init__(self) -> None:
        self.found: list[Any] = []
        self.done: Deferred[list[Any]] = Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.found.append(address)

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


class DNSJoin(TimerService):
    """
    Resolves C{hostname} every C{interval} seconds (TimerService's
    C{step}) and considers every address found, at C{port}.
    """

    log = Logger()

    def __init__(
        self,
        hostname: str,
        port: int,
        resolver: Any,
        consider: Callable[[str], None],
        clock: Any,
        *,
        interval: float = 2.0,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.resolver = resolver
        self.consider = consider
        self.last: list[str] = []
        super().__init__(interval, self.resolve_once)
        self.clock = clock

    def resolve_once(self) -> Deferred[None]:
        receiver = _Addresses()
        try:
            self.resolver.resolveHostName(receiver, self.hostname, portNumber=self.port)
        except Exception:
            # Logged by failed() below: raising here would end the loop.
            receiver.done.errback()

        def found(addresses: list[Any]) -> None:
            ids = sorted({f"{a.host}:{self.port}" for a in addresses if ":" not in a.host})
            self.last = ids
            for node_id in ids:  # this node's own among them: admission refuses it
                self.consider(node_id)

        def failed(reason: Any) -> None:
            # Logged, never raised: that would end the loop for good.
            self.log.warn("could not resolve {name}: {reason}", name=self.hostname, reason=reason.value)

        return receiver.done.addCallback(found).addErrback(failed)
