# -*- test-case-name: tests.test_swim -*-
"""
SWIM membership with Lifeguard's refinements: the protocol's decisions.

Pure: time is passed in, nothing here does I/O.  L{dcounter.health} makes the
probes this module asks for and reports their outcomes; the HTTP API and the
replicator carry the rumors it hands out and hand back the rumors they get.

 - B{Probes.}  Each period the node probes one live peer, taken in turn from
   a shuffled list that is shuffled again at each pass (so every peer is
   probed within two passes), and one dead peer likewise, so that a peer back
   from the dead is re-admitted.  A node's probes per period do not grow with
   the cluster.
 - B{Indirect probes.}  A peer that does not answer is probed through
   C{indirect} (k) other live peers.  Only if none of them reaches it is it
   I{suspect}.
 - B{Suspicion} (Lifeguard).  A suspicion lasts from C{max_timeout} down to
   C{min_timeout} as independent peers confirm it:
   C{min_timeout = suspicion_mult * max(1, log10(n)) * period}, with n the
   members counted with this node, and C{max_timeout = suspicion_max_mult *
   min_timeout}; after C{k = suspicion_mult - 2} confirmations (none expected
   when n - 2 < k) it is at its minimum.  When it ends, the peer is I{dead}.
 - B{Dissemination.}  Every change (alive at a higher generation, suspect,
   dead) is a rumor, piggybacked on the messages already sent (probes'
   answers, indirect probes and their answers, syncs), each rumor about
   C{retransmit_mult * ceil(log10(n + 1))} times.  A rumor this node saw
   itself (its probe failed or was answered, its suspicion ran out, it
   refutes) and has not sent yet is L{news}: the replicator then gossips it
   at once to a few peers, as memberlist's gossip loop does, instead of
   waiting for a message to carry it.  A rumor heard from others waits for
   the messages already sent: each hop of its own message would make every
   event cost N messages.
 - B{Refutation.}  A node that hears it is suspect or dead at its current
   generation raises its generation and spreads that it is alive.  A rumor
   about another boot of a node (its C{incarnation}) than the one known is
   ignored: an old boot's death cannot kill a restarted node.
 - B{Local health} (Lifeguard).  A node that sees signs of its own slowness
   (probes unanswered with no nack either, having to refute) raises its
   awareness score, and its probe timeout is scaled by C{score + 1}; answered
   probes lower it again.
 - B{Trust.}  Rumors are taken only from members (the callers check the
   sender: with a key, its MAC; without, that it was admitted), and never
   about nodes not in the table: gossip neither admits nor invents members.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from dcounter.membership import MAX_GENERATION, Membership, PeerState
from dcounter.wire import Rumor


@dataclass
class Suspicion:
    """
    One suspicion of a peer (Lifeguard): its timer shortens with each peer
    that independently confirms it.  C{heard_from} holds the suspecting
    peers, the first one included, which is not a confirmation.
    """

    generation: int
    start: float
    min_timeout: float
    max_timeout: float
    expected: int
    heard_from: set[str] = field(default_factory=set)
    confirmations: int = 0

    def confirm(self, source: str) -> bool:
        """
        @return: whether C{source} is a new, independent, confirmation.
        """
        if source in self.heard_from:
            return False
        self.heard_from.add(source)
        self.confirmations += 1
        return True

    def deadline(self) -> float:
        if self.expected <= 0:
            return self.start + self.min_timeout
        done = min(self.confirmations, self.expected)
        frac = math.log(done + 1) / math.log(self.expected + 1)
        timeout = self.max_timeout - frac * (self.max_timeout - self.min_timeout)
        return self.start + max(self.min_timeout, timeout)


@dataclass
class _Queued:
    rumor: Rumor
    #: whether this node saw it itself (its own probe, timer or refutation),
    #: rather than heard it
    own: bool = False
    sent: int = 0


class Swim:
    """
    @ivar generation: this node's own generation (SWIM's incarnation number
        within this boot).
    @ivar awareness: Lifeguard's local health score, from 0 to
        C{max_awareness - 1}.
    """

    def __init__(
        self,
        membership: Membership,
        incarnation: str,
        *,
        period: float = 0.5,
        probe_timeout: float = 2.0,
        indirect: int = 3,
        suspicion_mult: float = 2.0,
        suspicion_max_mult: float = 6.0,
        retransmit_mult: int = 4,
        max_awareness: int = 8,
        rng: random.Random | None = None,
    ) -> None:
        self.membership = membership
        self.self_id = membership.self_id
        self.incarnation = incarnation
        self.generation = 0
        self.period = period
        self.base_probe_timeout = probe_timeout
        self.indirect = indirect
        self.suspicion_mult = suspicion_mult
        self.suspicion_max_mult = suspicion_max_mult
        self.retransmit_mult = retransmit_mult
        self.max_awareness = max_awareness
        self.awareness = 0
        self._rng = rng or random.Random()
        self._order: list[str] = []
        self._dead_order: list[str] = []
        self._suspicions: dict[str, Suspicion] = {}
        self._queue: dict[str, _Queued] = {}
        membership.subscribe(self._changed)

    # Probes.

    def _next(self, order: list[str], candidates: list[str]) -> str | None:
        if not candidates:
            order.clear()
            return None
        present = set(candidates)
        while order and order[0] not in present:
            order.pop(0)
        if not order:
            order.extend(candidates)
            self._rng.shuffle(order)
        return order.pop(0)

    def targets(self) -> list[str]:
        """
        The peers to probe this period: one live (alive or suspect) peer and
        one dead one, each in turn from its shuffled list.  New peers join
        the next pass.
        """
        live = self._next(self._order, self.membership.live())
        dead_peers = [p.id for p in self.membership.peers() if p.state is PeerState.DEAD]
        dead = self._next(self._dead_order, dead_peers)
        return [p for p in (live, dead) if p is not None]

    def probe_timeout(self) -> float:
        """
        How long a probe waits for an answer, scaled by local health.
        """
        return self.base_probe_timeout * (self.awareness + 1)

    def helpers(self, target: str) -> list[str]:
        """
        The k live peers, besides C{target}, to ask to probe it.
        """
        others = [p for p in self.membership.live() if p != target]
        return self._rng.sample(others, min(self.indirect, len(others)))

    def _aware(self, delta: int) -> None:
        self.awareness = max(0, min(self.max_awareness - 1, self.awareness + delta))

    def answered(self, peer: str, now: float, incarnation: str, generation: int) -> None:
        """
        C{peer} answered a probe as itself (directly or through a helper's
        ack): alive, and a suspicion of it at or below C{generation} ends.
        """
        self._aware(-1)
        known = self.membership.get(peer)
        if known is None:
            return
        was = known.state
        self.membership.heard_from(peer, now, incarnation, generation)
        self._suspicions.pop(peer, None)
        if was is not PeerState.ALIVE:
            self._spread(Rumor("alive", peer, incarnation, known.generation, self.self_id), own=True)

    def acked(self, peer: str, now: float) -> None:
        """
        A helper reached C{peer} for us: it is alive, at what we know of it.
        """
        known = self.membership.get(peer)
        if known is not None and known.incarnation is not None:
            self.answered(peer, now, known.incarnation, known.generation)

    def unreachable(self, peer: str, now: float, *, asked: int, nacks: int) -> None:
        """
        Neither C{peer} nor any of the C{asked} helpers reached it; C{nacks}
        helpers answered that they could not (Lifeguard: a helper that did
        not answer at all hints that we are the slow one).
        """
        self._aware(asked - nacks if asked else 1)
        self.membership.failed(peer, now)
        known = self.membership.get(peer)
        if known is None or known.state is not PeerState.ALIVE and known.state is not PeerState.SUSPECT:
            return
        self._suspect(peer, known.incarnation or "", known.generation, self.self_id, now)

    # Suspicion.

    def _members(self) -> int:
        """
        The members counted with this node: the n of the formulas.
        """
        return len(self.membership.live()) + 1

    def suspicion_timeouts(self) -> tuple[float, float, int]:
        """
        Lifeguard's suspicion timeout range for the cluster's size now, and
        the confirmations expected to bring it to its minimum.
        """
        n = self._members()
        min_timeout = self.suspicion_mult * max(1.0, math.log10(n)) * self.period
        expected = int(self.suspicion_mult - 2)
        if n - 2 < expected:
            expected = 0
        return min_timeout, self.suspicion_max_mult * min_timeout, expected

    def _suspect(self, peer: str, incarnation: str, generation: int, source: str, now: float) -> None:
        known = self.membership.get(peer)
        if known is None:
            return
        current = self._suspicions.get(peer)
        if current is not None and current.generation == generation:
            if current.confirm(source):  # passed on, so that others count it too
                self._spread(
                    Rumor("suspect", peer, incarnation, generation, source), own=source == self.self_id
                )
            return
        min_timeout, max_timeout, expected = self.suspicion_timeouts()
        suspicion = Suspicion(generation, now, min_timeout, max_timeout, expected, heard_from={source})
        self._suspicions[peer] = suspicion
        self.membership.mark(peer, PeerState.SUSPECT, now, generation)
        # Passed on as its source said it: a node is never its own confirmation.
        self._spread(Rumor("suspect", peer, incarnation, generation, source), own=source == self.self_id)

    def tick(self, now: float) -> list[str]:
        """
        End the suspicions whose time is up: those peers are dead.

        @return: the peers declared dead.
        """
        dead = []
        for peer, suspicion in list(self._suspicions.items()):
            if now >= suspicion.deadline():
                del self._suspicions[peer]
                known = self.membership.get(peer)
                if known is not None and known.state is PeerState.SUSPECT:
                    # This node's finding only if its own probe took part:
                    # else every node would gossip each death.
                    own = self.self_id in suspicion.heard_from
                    self._declare_dead(peer, known.incarnation or "", suspicion.generation, now, own=own)
                    dead.append(peer)
        return dead

    def _declare_dead(
        self, peer: str, incarnation: str, generation: int, now: float, own: bool = False
    ) -> None:
        self._suspicions.pop(peer, None)
        self.membership.mark(peer, PeerState.DEAD, now, generation)
        self._spread(Rumor("dead", peer, incarnation, generation, self.self_id), own)

    def suspicion(self, peer: str) -> Suspicion | None:
        return self._suspicions.get(peer)

    # Dissemination.

    def _spread(self, rumor: Rumor, own: bool = False) -> None:
        replaced = self._queue.get(rumor.node)
        if replaced is not None and replaced.own and replaced.sent == 0:
            own = True  # news of ours not gossiped yet stays news
        self._queue[rumor.node] = _Queued(rumor, own)

    def _changed(self, peer: str, old: PeerState | None, new: PeerState | None) -> None:
        if new is None:  # forgotten or removed: nothing more to say of it
            self._queue.pop(peer, None)
            self._suspicions.pop(peer, None)
        elif new is PeerState.ALIVE:
            self._suspicions.pop(peer, None)

    def news(self) -> bool:
        """
        Whether a rumor this node saw itself was never sent yet: worth a
        message of its own.  A rumor heard from others travels on the
        messages already sent: were each node to send one of its own for
        every rumor it hears, each event would cost N times as many
        messages, and under load a burst of suspicions fed on itself.
        """
        return any(q.sent == 0 and q.own for q in self._queue.values())

    def rumors(self, limit: int = 16) -> tuple[Rumor, ...]:
        """
        The rumors to piggyback on one message: the least sent first; each
        is dropped once sent C{retransmit_mult * ceil(log10(n + 1))} times.
        """
        if not self._queue:
            return ()
        most = self.retransmit_mult * math.ceil(math.log10(self._members() + 1))
        chosen = sorted(self._queue.values(), key=lambda q: q.sent)[:limit]
        for queued in chosen:
            queued.sent += 1
            if queued.sent >= most:
                del self._queue[queued.rumor.node]
        return tuple(q.rumor for q in chosen)

    def received(self, rumors: Iterable[Rumor], now: float) -> None:
        """
        Rumors from a member (the caller has checked that the sender is
        one).  What they say of this node is refuted if it is about this
        boot; what they say of others counts only if about the boot known.
        """
        for rumor in rumors:
            if rumor.node == self.self_id:
                self._about_me(rumor)
                continue
            known = self.membership.get(rumor.node)
            if known is None or known.incarnation is None or rumor.incarnation != known.incarnation:
                continue
            if rumor.kind == "alive":
                if rumor.generation > known.generation and known.state is PeerState.SUSPECT:
                    self._suspicions.pop(rumor.node, None)
                    self.membership.mark(rumor.node, PeerState.ALIVE, now, rumor.generation)
                    self._spread(rumor)
                elif rumor.generation > known.generation:
                    known.generation = rumor.generation
                    self._spread(rumor)
            elif known.state is PeerState.DEAD or rumor.generation < known.generation:
                continue  # said of a dead peer, or refuted already
            elif rumor.kind == "suspect":
                self._suspect(rumor.node, rumor.incarnation, rumor.generation, rumor.source, now)
            else:
                self._declare_dead(rumor.node, rumor.incarnation, rumor.generation, now)

    def _about_me(self, rumor: Rumor) -> None:
        if rumor.kind == "alive" or rumor.incarnation != self.incarnation:
            return
        if rumor.generation >= self.generation:
            self.generation = min(rumor.generation + 1, MAX_GENERATION)
            self._aware(1)  # being suspected hints that we are slow
            self._spread(
                Rumor("alive", self.self_id, self.incarnation, self.generation, self.self_id), own=True
            )
