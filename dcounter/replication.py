# -*- test-case-name: tests.test_replication -*-
"""
Replication: both sides of POST /sync between peers.

Pushes: every durable local write marks its slot in the outbox of each live
peer; a flush, one reactor turn later, sends each peer the current value of
every slot marked for it, in one request.  While a request to a peer is in
flight, new writes wait in its outbox, so under load each request carries many
increments and no peer ever has more than one push outstanding.

Gossip of writes, in a cluster of more than C{gossip_above} nodes: pushing
every write to every peer costs the writer N - 1 requests per flush, and the
cluster N (N - 1) when every node writes.  There, a flush sends what was
written to C{push_fanout} random live peers only, and a node whose slots grew
from a push forwards what grew, once, to C{push_fanout} random others
(the sender left out): each new slot value is forwarded once per node, so a
write reaches nearly every node in O(log N) hops (the few it misses, about
e^-K of them, get it from anti-entropy), and a node's pushes per flush stay
C{push_fanout} whatever the cluster's size, with the writes of many nodes
batched into each.  A write that waits for N peers (C{?wait=N}) is pushed to
every live peer that does not hold it yet, as below the switch.

Anti-entropy: every C{interval} seconds, a round with one live peer chosen
at random, and at once with every peer that joins or comes back.  It repairs
whatever a push missed (a peer down, a partition), since merging is
idempotent.  A round ships only what differs: we send a digest of our state
(POST /digest, see L{dcounter.digest}); the peer answers with the buckets
whose digests differ and its state in them; we merge that and push back only
the slots it lacks.  An idle round costs a few kilobytes, whatever the number
of counters.  A peer too old to know /digest (a 404) gets the push-pull of
whole state that came before.

Gossip: every anti-entropy round and rumor carries the sender's live peers
(pushes of writes do not: that list was most of their bytes), and names we
do not know are handed to admission, so a node that knows one member learns all; and
SWIM's rumors (suspect, dead, alive), piggybacked.

Write concern: the replicator knows how much of this node's own slots each
peer holds (what it acknowledged in a push or push-pull, or sent us), so a
write can wait until N peers hold it (L{Replicator.replicated}).

Folding: a node's state holds the frozen slots of its earlier incarnations
(one each start).  Once C{fold_after} seconds have passed since start, and
every member this node knows has answered an anti-entropy round begun since
then (so this node holds at least what any member holds of those slots), the
node folds them (L{Node.fold}).  The members it waits for include those it
had before this start (the node remembers them in its store) until they have
been silent since for as long as a dead member is remembered; a node that
knows no member folds only if its state holds no other node's slots.  While
a fold waits, rounds go to members not caught up with yet.

Graceful stop: on stop, every live peer that does not hold all of this
node's own slots yet gets one last push, for a bounded time; whatever could
not be delivered is logged.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from dcounter import digest, wire
from dcounter.admission import Admission, NotMember
from dcounter.client import PeerClient, PeerError
from dcounter.counter import Slot, SlotKey, State, slot_keys
from dcounter.membership import Membership, PeerState
from dcounter.node import Node
from dcounter.swim import Swim


class WrongCluster(Exception):
    """
    A sync came from a node of another cluster.
    """


def _covers(held: Slot | None, slot: Slot) -> bool:
    return held is not None and held[0] >= slot[0] and held[1] >= slot[1]


class _Waiter:
    def __init__(self, key: SlotKey, slot: Slot, needed: int) -> None:
        self.key = key
        self.slot = slot
        self.needed = needed
        self.done: Deferred[int] = Deferred()
        self.timer: Any = None


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
        stop_timeout: float = 3.0,
        swim: Swim | None = None,
        fold_after: float = 60.0,
        push_fanout: int = 3,
        gossip_above: int | None = None,
    ) -> None:
        """
        @param push_fanout: peers each flush goes to, once gossiping.
        @param gossip_above: gossip writes in a cluster of more than this many
            nodes (this one included); None: push every write to every peer.
        """
        self.node = node
        self.admission = admission or Admission(membership, node.cluster)
        self.membership = membership
        self.client = client
        super().__init__(interval, self.anti_entropy)
        self.clock = clock  # TimerService's, and ours
        self.swim = swim
        self.consider = consider
        self._rng = rng or random.Random()
        self._outbox: dict[str, set[SlotKey]] = {}
        #: peer -> idempotency keys to push with the slots
        self._key_outbox: dict[str, set[str]] = {}
        self._in_flight: set[str] = set()
        #: peer -> when a push to it last left: who waits longest goes first
        self._pushed_at: dict[str, float] = {}
        #: Whether the last flush left peers waiting for room (L{MAX_PUSHES}).
        self._crowded = False
        #: Senders refused as not admitted (yet), in order, at most
        #: L{CONTACTED_MAX} (the oldest go).
        self._contacted: dict[str, None] = {}
        self._flush_call: Any = None
        #: The digest of our outgoing state, and the node's version it is of.
        self._digest: tuple[int, bytes] | None = None
        #: The same for our idempotency keys.
        self._keys_digest: tuple[int, str] | None = None
        #: peer -> how much of each of this node's own slots it holds
        self._holds: dict[str, dict[SlotKey, Slot]] = {}
        self._waiters: list[_Waiter] = []
        self.stop_timeout = stop_timeout
        self.fold_after = fold_after
        #: peer -> when the last anti-entropy round with it that completed began
        self._caught_up: dict[str, float] = {}
        self.push_fanout = push_fanout
        self.gossip_above = gossip_above
        #: Gossiping: slots (and idempotency keys) for the next flush's
        #: random peers, and the peers they came from (not sent back).
        self._gossip: set[SlotKey] = set()
        self._gossip_keys: set[str] = set()
        self._gossip_from: set[str] = set()
        node.subscribe(self.local_write)
        membership.subscribe(self._peer_changed)

    def stopService(self) -> Deferred[None]:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        timer = super().stopService()

        async def stop() -> None:
            await self.deliver_pending()
            await timer

        return Deferred.fromCoroutine(stop())

    async def deliver_pending(self) -> None:
        """
        Push to every live peer what it does not hold yet of this node's own
        slots, waiting at most C{stop_timeout}; log what was not delivered.
        """
        sends = {peer: self._missing(peer) for peer in self.membership.live()}
        sends = {peer: keys for peer, keys in sends.items() if keys}
        if not sends:
            return
        peers = list(sends)
        pushes = [
            self._send(
                peer, self.node.outgoing(sends[peer]), self.node.outgoing_keys(self._key_outbox.get(peer, ()))
            ).addTimeout(self.stop_timeout, self.clock)
            for peer in peers
        ]
        results = await DeferredList(pushes, consumeErrors=True)
        for peer, (ok, result) in zip(peers, results, strict=True):
            if ok:
                continue
            missing = self._missing(peer)
            if missing:
                self.log.warn(
                    "on stop, could not deliver {increments} increments and decrements in {counters} "
                    "counters to {peer}: {reason}; they reach it from the other peers, or when this "
                    "node comes back",
                    increments=self._shortfall(peer, missing),
                    counters=len(missing),
                    peer=peer,
                    reason=getattr(result, "value", result),
                )
        delivered = ", ".join(peer for peer, (ok, _) in zip(peers, results, strict=True) if ok)
        self.log.info("on stop, pushed this node's last writes to {peers}", peers=delivered or "none")

    def _missing(self, peer: str) -> set[SlotKey]:
        """This node's own durable slots that C{peer} is not known to hold."""
        held = self._holds.get(peer, {})
        replica = self.node.replica
        return {
            (name, replica)
            for name, slot in self.node.own_slots().items()
            if not _covers(held.get((name, replica)), slot)
        }

    def _shortfall(self, peer: str, keys: set[SlotKey]) -> int:
        own, held = self.node.own_slots(), self._holds.get(peer, {})
        total = 0
        for key in keys:
            p, n = own[key[0]]
            hp, hn = held.get(key, (0, 0))
            total += max(p - hp, 0) + max(n - hn, 0)
        return total

    # Write concern.

    def _record_held(self, peer: str, state: State) -> None:
        """C{peer} holds at least C{state}: note it for this node's own slots."""
        replica = self.node.replica
        held = None
        for name, slots in state.items():
            slot = slots.get(replica)
            if slot is None:
                continue
            if held is None:
                held = self._holds.setdefault(peer, {})
            old = held.get((name, replica), (0, 0))
            held[(name, replica)] = (max(old[0], slot[0]), max(old[1], slot[1]))
        if held is not None and self._waiters:
            for waiter in list(self._waiters):
                self._check(waiter)

    def holders(self, key: SlotKey, slot: Slot) -> int:
        """How many peers are known to hold at least C{slot} of C{key}."""
        return sum(_covers(held.get(key), slot) for held in self._holds.values())

    def replicated(self, key: SlotKey, slot: Slot, needed: int, timeout: float) -> Deferred[int]:
        """
        Wait until C{needed} peers hold at least C{slot} of this node's own
        slot C{key}, or C{timeout} seconds.

        @return: a Deferred firing with how many peers hold it (then: fewer
            than needed if the time ran out).
        """
        waiter = _Waiter(key, slot, needed)
        if self._check(waiter):
            return waiter.done
        self._waiters.append(waiter)
        if self.gossiping():
            # Forwarded copies are not acknowledged to us: push it to every
            # live peer that does not hold it yet, as below the switch, so
            # that the first N to answer make the write concern.
            idem = self._gossip_keys if key in self._gossip else set()
            for peer in self.membership.live():
                if not _covers(self._holds.get(peer, {}).get(key), slot):
                    self._mark(peer, (key,), idem)
            self._schedule_flush()

        def expire() -> None:
            self._waiters.remove(waiter)
            waiter.done.callback(self.holders(key, slot))

        waiter.timer = self.clock.callLater(timeout, expire)
        return waiter.done

    def _check(self, waiter: _Waiter) -> bool:
        count = self.holders(waiter.key, waiter.slot)
        if count < waiter.needed:
            return False
        if waiter.timer is not None:
            waiter.timer.cancel()
            self._waiters.remove(waiter)
        waiter.done.callback(count)
        return True

    # Outgoing.

    def _message(self, state: Any, reply: bool, keys: Any = None, members: bool = True) -> wire.Sync:
        """
        A sync from this node.  Pushes of writes leave out the member list
        (C{members}=False): it is the bulk of a push (about 20 bytes a
        member, for a few bytes of slots: 1,058 bytes a push at 50 nodes),
        and every anti-entropy round and rumor carries it anyway.
        """
        return wire.Sync(
            keys=keys or {},
            sender=self.node.node_id,
            incarnation=self.node.identity.incarnation,
            cluster=self.node.cluster,
            state=state,
            members=tuple(self.membership.live()) if members else (),
            reply=reply,
            rumors=self.swim.rumors() if self.swim is not None else (),
        )

    def gossiping(self) -> bool:
        """
        Whether writes spread by gossip (the cluster is past the switch
        point) rather than pushed to every peer.
        """
        return self.gossip_above is not None and len(self.membership.live()) + 1 > self.gossip_above

    def _schedule_flush(self) -> None:
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def _mark(self, peer: str, keys: Iterable[SlotKey], idem: Collection[str] = ()) -> None:
        """Put C{keys}, and the idempotency keys C{idem}, in C{peer}'s outbox."""
        self._outbox.setdefault(peer, set()).update(keys)
        if idem:
            self._key_outbox.setdefault(peer, set()).update(idem)

    def local_write(self, keys: list[SlotKey], idem: Sequence[str] = ()) -> None:
        if self.gossiping():
            self._gossip.update(keys)
            self._gossip_keys.update(idem)
        else:
            for peer in self.membership.live():
                self._mark(peer, keys, idem)
        self._schedule_flush()

    def _forward(self, sender: str, grown: list[SlotKey], idem: AbstractSet[str]) -> None:
        """
        Gossiping: slots that grew from C{sender}'s push go on to random
        peers at the next flush (once: a slot grows once per value).
        """
        self._gossip.update(grown)
        self._gossip_keys.update(idem)
        self._gossip_from.add(sender)
        self._schedule_flush()

    def _spread(self) -> None:
        """
        Put the slots waiting to be gossiped in the outboxes of
        C{push_fanout} random live peers, not those they came from.
        """
        live = self.membership.live()
        others = [peer for peer in live if peer not in self._gossip_from]
        for peer in self._rng.sample(others, min(self.push_fanout, len(others))):
            self._mark(peer, self._gossip, self._gossip_keys)
        self._gossip, self._gossip_keys, self._gossip_from = set(), set(), set()

    #: Pushes in flight at most, to all peers together.  The others wait,
    #: gathering later writes, until one is answered: in a cluster of 100,
    #: a write on every node at once otherwise had each node open 99
    #: connections at once, queueing past the pushes' and probes' timeouts,
    #: and the retries and suspicions that followed kept it saturated.
    MAX_PUSHES = 4

    def flush(self) -> None:
        """
        Push each peer's outbox, unless a push to it is in flight already
        (gossiping: first choose the peers of what waits to be gossiped);
        at most L{MAX_PUSHES} at once, the peers waiting longest first.
        """
        self._flush_call = None
        if self._gossip:
            self._spread()
        ready = [peer for peer, keys in self._outbox.items() if keys and peer not in self._in_flight]
        room = max(0, self.MAX_PUSHES - len(self._in_flight))
        self._crowded = len(ready) > room
        if self._crowded:
            # Peers never pushed to tie: shuffled, so that nodes writing at
            # once do not all connect to the same few peers first.
            self._rng.shuffle(ready)
            ready.sort(key=lambda peer: self._pushed_at.get(peer, float("-inf")))
            del ready[room:]
        for peer in ready:
            keys, self._outbox[peer] = self._outbox[peer], set()
            self._push(peer, keys, self._key_outbox.pop(peer, set()))

    def _send(self, peer: str, state: State, idem: Any = None) -> Deferred[wire.Sync | None]:
        """Push C{state} to C{peer}; once it acknowledges, it holds it."""

        def held(reply: wire.Sync | None) -> wire.Sync | None:
            self._record_held(peer, state)
            return reply

        message = self._message(state, reply=False, keys=idem, members=False)
        return self.client.sync(peer, message).addCallback(held)

    def _push(self, peer: str, keys: set[SlotKey], idem: AbstractSet[str] = frozenset()) -> None:
        self._in_flight.add(peer)
        self._pushed_at[peer] = self.clock.seconds()
        d = self._send(peer, self.node.outgoing(keys), self.node.outgoing_keys(idem) if idem else None)

        def sent(_: object) -> None:
            self._in_flight.discard(peer)
            if self._outbox.get(peer) or self._crowded:
                self._schedule_flush()

        def failed(reason: Any) -> None:
            # Keep the slots for the next flush (a later write or the next
            # anti-entropy round), unless the peer has left meanwhile; not
            # at once, which would retry a dead peer in a busy loop.
            self._in_flight.discard(peer)
            # To the back of the line: a slow or dead peer must not take the
            # room first again while the others wait.
            self._pushed_at[peer] = self.clock.seconds()
            if peer in self._outbox:
                self._mark(peer, keys, idem)
            self.log.debug("push to {peer} failed: {reason}", peer=peer, reason=reason.value)

        d.addCallbacks(sent, failed)

    #: Seconds within which an idempotency key counts as recent (its newest
    #: entry is that young).  Anti-entropy compares the digests of the
    #: older keys only, and the recent ones travel whole with the slots
    #: they write: a push takes milliseconds, so under a steady flow of
    #: keyed writes the digests of all keys nearly always differed by the
    #: one in flight, and the round fell back to the whole state, every key
    #: included (519 KB a round at 52 keyed writes a second with 3,000 keys
    #: remembered; at the default bound of keys, about 7.8 MB).  An older
    #: key that one side lacks was lost: that round still falls back.
    RECENT_KEYS = 5.0

    def exchange(self, peer: str) -> Deferred[None]:
        """
        One anti-entropy round with C{peer}: digests first, then only the
        buckets that differ.
        """
        message = wire.Digest(
            sender=self.node.node_id,
            incarnation=self.node.identity.incarnation,
            cluster=self.node.cluster,
            digest=self.summary(),
            members=tuple(self.membership.live()),
        )
        began = self.clock.seconds()
        before = max(0.0, began - self.RECENT_KEYS)
        d = self.client.digest(peer, message, digest.BUCKETS, keys_before=before)

        def answered(reply: wire.DigestReply) -> Deferred[None] | None:
            merged = self._merge_reply(peer, reply, before)
            if merged is None:
                return None
            if not merged:
                # Idempotency keys differ (one side missed a push): they
                # travel whole, with the state, this round.
                return self.exchange_whole(peer)
            self._caught_up[peer] = began
            if self.node.fold_pending:
                self._fold_if_caught_up()
            return None

        def failed(reason: Any) -> Deferred[None] | None:
            if isinstance(reason.value, PeerError) and reason.value.code == 404:
                return self.exchange_whole(peer)  # an older node, before /digest
            self.log.debug("anti-entropy with {peer} failed: {reason}", peer=peer, reason=reason.value)
            return None

        return d.addCallbacks(answered, failed)

    def _merge_reply(self, peer: str, reply: wire.DigestReply, before: float) -> bool | None:
        """
        Take up a peer's answer to our digest, which asked for the digest
        of its keys with no entry after C{before}.

        Slots must not travel without the key entries they count (a node
        holding a retried write's two copies but only one entry would
        over-count).  Keys older than C{before} are the same on both sides
        when their digests are; the recent ones travel with the slots that
        they write, both ways.

        @return: None if it was refused (its sender is not an admitted
            member); False if the keys differ, and nothing was merged: this
            round must be the whole-state push-pull, keys included; True
            once merged.
        """
        try:
            self._admitted(reply.cluster, reply.sender)
        except (WrongCluster, NotMember) as e:
            self.log.debug("anti-entropy with {peer} refused: {why}", peer=peer, why=e)
            return None
        self._heard(reply.sender, reply.incarnation, reply.members)
        if reply.keys_before == before:
            same = reply.keys == self.keys_summary_before(before)
        else:  # a node older than keys_before (or a query changed on the way)
            same = not reply.recent and reply.keys == self.keys_summary()
        if not same:
            return False
        self.node.merge(reply.state, reply.recent)
        if reply.buckets:
            mine = digest.in_buckets(self.node.outgoing(), reply.buckets)
            lacking = digest.ahead(mine, reply.state)
            if lacking:
                self._mark(peer, slot_keys(lacking), self.node.counters.keys.touching(lacking, before))
                self._schedule_flush()
        return True

    def summary(self) -> bytes:
        """
        The digest of the state we send to peers, computed once per change.
        """
        if self._digest is None or self._digest[0] != self.node.version:
            self._digest = (self.node.version, digest.summarize(self.node.outgoing()))
        return self._digest[1]

    def keys_summary(self) -> str:
        """
        The digest of the idempotency keys we send to peers (see
        L{wire.keys_digest}), computed once per change.
        """
        if self._keys_digest is None or self._keys_digest[0] != self.node.version:
            self._keys_digest = (self.node.version, wire.keys_digest(self.node.outgoing_keys()))
        return self._keys_digest[1]

    def keys_summary_before(self, before: float) -> str:
        """
        The digest of the idempotency keys we send to peers that have no
        entry after C{before}: L{keys_summary} when none has.
        """
        if self.node.counters.keys.newest <= before:
            return self.keys_summary()
        keys = self.node.outgoing_keys()
        return wire.keys_digest({key: record for key, record in keys.items() if record.last() <= before})

    def exchange_whole(self, peer: str) -> Deferred[None]:
        """
        Push-pull whole state with C{peer}: anti-entropy with a node that
        does not know /digest.
        """
        state = self.node.outgoing()
        began = self.clock.seconds()
        d = self.client.sync(peer, self._message(state, reply=True, keys=self.node.outgoing_keys()))

        def merge(reply: wire.Sync | None) -> None:
            self._record_held(peer, state)
            if reply is not None:
                self.received(reply, forward=False)
                self._caught_up[peer] = began

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
            if self.node.fold_pending:
                self._fold_if_caught_up()
                behind = [peer for peer in live if not self._is_caught_up(peer)]
                live = behind or live
            if live:
                self.exchange(self._rng.choice(live))
            self.flush()
        except Exception:
            self.log.failure("anti-entropy round failed")

    def _is_caught_up(self, peer: str) -> bool:
        return self._caught_up.get(peer, -1.0) >= self.node.started + self.fold_after

    def _fold_if_caught_up(self) -> None:
        """
        Fold this node's earlier incarnations if every member it knows (dead
        ones too, until they are forgotten) has shown it what it holds.
        """
        now = self.clock.seconds()
        if now < self.node.started + self.fold_after:
            return
        known = set(self.membership.known())
        if now >= self.node.started + self.membership.forget_after:
            # Members remembered from before this start that have not been
            # heard from since, for as long as a dead one is remembered: gone.
            for member in self.node.remembered - known:
                self.node.remember(member, known=False)
        members = known | self.node.remembered
        if not members and self.node.has_others():
            return  # peers it has had are not found yet: one may hold more
        if all(self._is_caught_up(peer) for peer in members):
            self.node.fold()

    #: Peers a membership rumor is gossiped to at once (memberlist's
    #: GossipNodes).
    GOSSIP_TO = 3

    def gossip(self) -> None:
        """
        If SWIM has news (a suspicion, a death, a refutation not yet sent),
        send it at once to a few random live peers, on an empty push.
        Never raises: it runs in a LoopingCall.
        """
        try:
            if self.swim is None or not self.swim.news():
                return
            live = self.membership.live()
            for peer in self._rng.sample(live, min(self.GOSSIP_TO, len(live))):
                self.client.sync(peer, self._message({}, reply=False)).addErrback(self._gossip_failed, peer)
        except Exception:
            self.log.failure("gossip failed")

    def _gossip_failed(self, reason: Failure, peer: str) -> None:
        self.log.debug("gossip to {peer} failed: {reason}", peer=peer, reason=reason.value)

    #: Anti-entropy rounds a peer that joins (or comes back) has at once,
    #: about, from the whole cluster: each node has one with it only with
    #: probability JOIN_ROUNDS / its live peers.  In a small cluster that is
    #: every node; in one of 100, a node joining all at once would
    #: otherwise have 99 rounds, and each of them one with every joiner.
    #: The rounds every node has each interval spread the rest.  A peer that
    #: contacted this node before it was admitted here (L{_contacted}) has
    #: one for sure: it may be a newcomer that knows no other member yet,
    #: and learns them from the round.
    JOIN_ROUNDS = 3
    #: A bound on L{_contacted}, which strangers' messages could fill.
    CONTACTED_MAX = 256

    def _exchange_if_live(self, peer: str) -> None:
        if peer in self.membership.live():
            self.exchange(peer)

    def _peer_changed(self, peer: str, old: PeerState | None, new: PeerState | None) -> None:
        if new is PeerState.ALIVE:
            self.node.remember(peer)
        elif new is None:
            self.node.remember(peer, known=False)
        if new is PeerState.ALIVE and old in (None, PeerState.DEAD):
            self._outbox.setdefault(peer, set())
            contacted = peer in self._contacted
            self._contacted.pop(peer, None)
            if contacted or self._rng.random() * len(self.membership.live()) < self.JOIN_ROUNDS:
                # Not from inside the membership change: its answer may
                # change membership again.
                self.clock.callLater(0, self._exchange_if_live, peer)
        elif new in (None, PeerState.DEAD):
            self._outbox.pop(peer, None)
            self._key_outbox.pop(peer, None)
        if new is None:
            self._holds.pop(peer, None)
            self._caught_up.pop(peer, None)
            self._pushed_at.pop(peer, None)

    # Incoming.

    def received(self, sync: wire.Sync, *, forward: bool = True) -> wire.Sync | None:
        """
        A peer's sync (a push, a push-pull, or the reply to ours).

        Only an admitted member's sync changes anything.  Anyone else's is
        refused; its sender, if it is a node at all, is considered for
        admission (it may have just started), and merged from once admitted.

        @param forward: gossiping, forward the slots that grew from a push
            (not from the reply to our own push-pull).
        @return: our whole state, if the peer asked for it.
        @raise WrongCluster: if it comes from another cluster; nothing changes.
        @raise NotMember: if its sender was not admitted; nothing changes.
        """
        self._admitted(sync.cluster, sync.sender)
        grown = self.node.merge(sync.state, sync.keys)
        if grown and forward and not sync.reply and self.gossiping():
            self._forward(sync.sender, grown, set(sync.keys))
        self._record_held(sync.sender, sync.state)
        self._heard(sync.sender, sync.incarnation, sync.members, sync.rumors)
        if sync.reply:
            return self._message(self.node.outgoing(), reply=False, keys=self.node.outgoing_keys())
        return None

    def received_digest(self, message: wire.Digest, keys_before: float | None = None) -> wire.DigestReply:
        """
        A peer's digest, opening an anti-entropy round.  Only an admitted
        member's is answered, as for L{received}.

        @param keys_before: the asker's: answer with the digest of our keys
            with no entry after it, and send the newer ones that write the
            counters we send (see L{_merge_reply}); None: the digest of all.
        @return: the buckets that differ, and our state in them.
        @raise WrongCluster: if it comes from another cluster; nothing changes.
        @raise NotMember: if its sender was not admitted; nothing changes.
        """
        self._admitted(message.cluster, message.sender)
        self._heard(message.sender, message.incarnation, message.members)
        buckets = digest.differing(self.summary(), message.digest)
        state = digest.in_buckets(self.node.outgoing(), buckets) if buckets else {}
        if keys_before is None:
            keys, recent = self.keys_summary(), {}
        else:
            keys = self.keys_summary_before(keys_before)
            recent = self.node.outgoing_keys(self.node.counters.keys.touching(state, keys_before))
        return wire.DigestReply(
            sender=self.node.node_id,
            incarnation=self.node.identity.incarnation,
            cluster=self.node.cluster,
            buckets=tuple(buckets),
            state=state,
            members=tuple(self.membership.live()),
            keys=keys,
            keys_before=keys_before,
            recent=recent,
        )

    def _admitted(self, cluster: str, sender: str) -> None:
        """
        Whether a message from C{sender} of C{cluster} may change anything.

        @raise WrongCluster: if it comes from another cluster.
        @raise NotMember: if its sender was not admitted (it is considered
            for admission: it may have just started).
        """
        if cluster != self.node.cluster:
            raise WrongCluster(f"this node belongs to cluster {self.node.cluster!r}, not {cluster!r}")
        if not self.admission.is_member(sender):
            self._contacted.pop(sender, None)
            self._contacted[sender] = None
            if len(self._contacted) > self.CONTACTED_MAX:
                del self._contacted[next(iter(self._contacted))]
            self.consider(sender, contact=True)
            raise NotMember(f"{sender} is not a member admitted by this node")

    def _heard(
        self, sender: str, incarnation: str, members: tuple[str, ...], rumors: tuple[wire.Rumor, ...] = ()
    ) -> None:
        """
        A message from a member: it is alive, the members it names may be
        peers (gossip), and SWIM's rumors it carries are news.
        """
        now = self.clock.seconds()
        self.membership.heard_from(sender, now, incarnation)
        if self.swim is not None and rumors:
            self.swim.received(rumors, now)
        for member in members:
            self.consider(member)
