# -*- test-case-name: tests.test_replication -*-
"""
Replication: both sides of POST /sync between peers.

Pushes: every durable local write marks its slot in the outbox of each live
peer; a flush, one reactor turn later, sends each peer the current value of
every slot marked for it, in one request.  While a request to a peer is in
flight, new writes wait in its outbox, so under load each request carries many
increments and no peer ever has more than one push outstanding.

Anti-entropy: every C{interval} seconds, a push-pull of whole state with one
live peer chosen at random, and at once with every peer that joins or comes
back.  It repairs whatever a push missed (a peer down, a partition), since
merging is idempotent.

Gossip: every sync carries the sender's live peers, and names we do not know
are handed to admission, so a node that knows one member learns all.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dcounter import wire
from dcounter.admission import Admission
from dcounter.client import PeerClient
from dcounter.counter import SlotKey
from dcounter.membership import Membership, PeerState
from dcounter.node import Node


class WrongCluster(Exception):
    """
    A sync came from a node of another cluster.
    """


class NotMember(Exception):
    """
    A sync came from a node that was not admitted: nothing changes.
    """


class Replicator(TimerService):
    log = Logger()

    def __init__(
        self,
        node: Node,
        membership: Membership,
        client: PeerClient,
        clock: Any,
        consider: Callable[..., None],
        *,
        interval: float = 2.0,
        rng: random.Random | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.node = node
        self.admission = admission or Admission(membership, node.cluster)
        self.membership = membership
        self.client = client
        super().__init__(interval, self.anti_entropy)
        self.clock = clock  # TimerService's, and ours
        self.consider = consider
        self._rng = rng or random.Random()
        self._outbox: dict[str, set[SlotKey]] = {}
        self._in_flight: set[str] = set()
        self._flush_call: Any = None
        node.subscribe(self.local_write)
        membership.subscribe(self._peer_changed)

    def stopService(self) -> Deferred[None]:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        return super().stopService()

    # Outgoing.

    def _message(self, state: Any, reply: bool) -> wire.Sync:
        return wire.Sync(
            sender=self.node.node_id,
            incarnation=self.node.identity.incarnation,
            cluster=self.node.cluster,
            state=state,
            members=tuple(self.membership.live()),
            reply=reply,
        )

    def local_write(self, keys: list[SlotKey]) -> None:
        for peer in self.membership.live():
            self._outbox.setdefault(peer, set()).update(keys)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Push each peer's outbox, unless a push to it is in flight already.
        """
        self._flush_call = None
        for peer, keys in list(self._outbox.items()):
            if keys and peer not in self._in_flight:
                self._outbox[peer] = set()
                self._push(peer, keys)

    def _push(self, peer: str, keys: set[SlotKey]) -> None:
        self._in_flight.add(peer)
        d = self.client.sync(peer, self._message(self.node.outgoing(keys), reply=False))

        def sent(_: object) -> None:
            self._in_flight.discard(peer)
            if self._outbox.get(peer) and self._flush_call is None:
                self._flush_call = self.clock.callLater(0, self.flush)

        def failed(reason: Any) -> None:
            # Keep the slots for the next flush (a later write or the next
            # anti-entropy round), unless the peer has left meanwhile; not
            # at once, which would retry a dead peer in a busy loop.
            self._in_flight.discard(peer)
            if peer in self._outbox:
                self._outbox[peer].update(keys)
            self.log.debug("push to {peer} failed: {reason}", peer=peer, reason=reason.value)

        d.addCallbacks(sent, failed)

    def exchange(self, peer: str) -> Deferred[None]:
        """
        Push-pull whole state with C{peer}.
        """
        d = self.client.sync(peer, self._message(self.node.outgoing(), reply=True))

        def merge(reply: wire.Sync | None) -> None:
            if reply is not None:
                self.received(reply)

        def failed(reason: Any) -> None:
            # The peer did not answer, or answered wrongly (another cluster).
            self.log.debug("anti-entropy with {peer} failed: {reason}", peer=peer, reason=reason.value)

        return d.addCallback(merge).addErrback(failed)

    def anti_entropy(self) -> None:
        """
        One anti-entropy round.  Never raises: it runs in a LoopingCall.
        """
        try:
            live = self.membership.live()
            if live:
                self.exchange(self._rng.choice(live))
            self.flush()
        except Exception:
            self.log.failure("anti-entropy round failed")

    def _peer_changed(self, peer: str, old: PeerState | None, new: PeerState | None) -> None:
        if new is PeerState.ALIVE and old in (None, PeerState.DEAD):
            self._outbox.setdefault(peer, set())
            self.exchange(peer)
        elif new in (None, PeerState.DEAD):
            self._outbox.pop(peer, None)

    # Incoming.

    def received(self, sync: wire.Sync) -> wire.Sync | None:
        """
        A peer's sync (a push, a push-pull, or the reply to ours).

        Only an admitted member's sync changes anything.  Anyone else's is
        refused; its sender, if it is a node at all, is considered for
        admission (it may have just started), and merged from once admitted.

        @return: our whole state, if the peer asked for it.
        @raise WrongCluster: if it comes from another cluster; nothing changes.
        @raise NotMember: if its sender was not admitted; nothing changes.
        """
        if sync.cluster != self.node.cluster:
            raise WrongCluster(f"this node belongs to cluster {self.node.cluster!r}, not {sync.cluster!r}")
        if not self.admission.is_member(sync.sender):
            self.consider(sync.sender, contact=True)
            raise NotMember(f"{sync.sender} is not a member admitted by this node")
        self.node.merge(sync.state)
        self.membership.heard_from(sync.sender, self.clock.seconds(), sync.incarnation)
        for member in sync.members:
            self.consider(member)
        if sync.reply:
            return self._message(self.node.outgoing(), reply=False)
        return None
