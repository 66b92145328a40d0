# -*- test-case-name: tests.test_membership -*-
"""
The peer table: who is in the cluster, and what we believe of each.

Pure: time is passed in, nothing here does I/O.  This is the one place where
a peer becomes alive, suspect or dead, is forgotten, or is quarantined.

When a peer becomes suspect or dead is the SWIM protocol's decision
(L{dcounter.swim}); this table records it.  A I{suspect} peer is still listed
and still replicated to, since it may only be slow.  A I{dead} one leaves the
peer list but is still probed now and then, so that it is re-admitted as soon
as it answers or contacts us.  A dead peer silent for C{forget_after} seconds
is forgotten.  A peer removed by an
operator is quarantined for C{quarantine} seconds: nothing but another explicit
registration brings it back before then.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

#: The highest SWIM generation taken from a peer.  A node raises its own by
#: 1 to refute a rumor (L{dcounter.swim}), and a peer's by 1 on hearing from
#: it after a suspicion (L{Membership.heard_from}): both stop here, and
#: L{dcounter.wire} refuses more, so what a node sends is always within what
#: its peers decode.  Honest generations stay small.
MAX_GENERATION = 2**62


class PeerState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass
class Peer:
    id: str
    state: PeerState
    since: float
    last_seen: float
    failures: int = 0
    incarnation: str | None = None
    #: SWIM's incarnation number within this boot (C{incarnation}): what
    #: the peer raises to refute a suspicion of itself.
    generation: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "state": self.state.value,
            "since": self.since,
            "last_seen": self.last_seen,
            "failures": self.failures,
            "incarnation": self.incarnation,
            "generation": self.generation,
        }


#: Called with (peer id, old state or None for a new peer, new state or None
#: for a peer forgotten or removed).
Listener = Callable[[str, "PeerState | None", "PeerState | None"], None]


class Membership:
    def __init__(
        self,
        self_id: str,
        *,
        forget_after: float = 600.0,
        quarantine: float = 60.0,
    ) -> None:
        self.self_id = self_id
        self.forget_after = forget_after
        self.quarantine = quarantine
        self._peers: dict[str, Peer] = {}
        self._quarantined: dict[str, float] = {}
        self._listeners: list[Listener] = []
        #: L{live}, kept until a peer changes state: every write reads it.
        self._live: list[str] | None = None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _set(self, peer: Peer, state: PeerState | None, now: float) -> None:
        old = peer.state if peer.id in self._peers else None
        self._live = None
        if state is None:
            self._peers.pop(peer.id, None)
        else:
            if state != old:
                peer.since = now
            peer.state = state
            self._peers[peer.id] = peer
        if state != old:
            for listener in self._listeners:
                listener(peer.id, old, state)

    # What we learn of peers.

    def heard_from(
        self, peer_id: str, now: float, incarnation: str | None = None, generation: int | None = None
    ) -> None:
        """
        C{peer_id} answered a probe or contacted us: it is alive.  Whether a
        node I{may} be added is not decided here but by
        L{dcounter.admission.Admission}, the only caller that adds one.
        """
        peer = self._peers.get(peer_id)
        reviving = peer is not None and peer.state is not PeerState.ALIVE
        if peer is None:
            peer = Peer(peer_id, PeerState.ALIVE, since=now, last_seen=now)
        peer.last_seen = now
        peer.failures = 0
        if incarnation is not None and incarnation != peer.incarnation:
            peer.incarnation = incarnation
            peer.generation = 0  # a new boot counts again from 0
            reviving = False
        if generation is not None and generation > peer.generation:
            peer.generation = generation
        elif reviving:
            # Heard from directly, it outranks the rumors of its suspicion
            # or death still going round: they are at its old generation.
            peer.generation = min(peer.generation + 1, MAX_GENERATION)
        self._set(peer, PeerState.ALIVE, now)

    def failed(self, peer_id: str, now: float) -> PeerState | None:
        """
        A probe of C{peer_id} failed (directly and through others): only
        counted here; L{dcounter.swim} decides what follows.

        @return: its state now, or None if it is not in the table.
        """
        peer = self._peers.get(peer_id)
        if peer is None:
            return None
        peer.failures += 1
        return peer.state

    def mark(self, peer_id: str, state: PeerState, now: float, generation: int | None = None) -> bool:
        """
        The SWIM protocol decided C{peer_id} is C{state} (at C{generation}).

        @return: whether its state changed (False too if it is unknown).
        """
        peer = self._peers.get(peer_id)
        if peer is None:
            return False
        if generation is not None and generation > peer.generation:
            peer.generation = generation
        changed = peer.state is not state
        self._set(peer, state, now)
        return changed

    def remove(self, peer_id: str, now: float) -> bool:
        """
        An operator removed C{peer_id}: forget it and quarantine it.  A peer
        not in the table is left alone (the request was wrong: it changes
        nothing).

        @return: whether it was in the table.
        """
        peer = self._peers.get(peer_id)
        if peer is None:
            return False
        self._quarantined[peer_id] = now + self.quarantine
        self._set(peer, None, now)
        return True

    def expire(self, now: float) -> list[str]:
        """
        Forget dead peers silent for too long, end finished quarantines.

        @return: the ids of the peers forgotten.
        """
        for peer_id, until in list(self._quarantined.items()):
            if until <= now:
                del self._quarantined[peer_id]
        gone = [
            p
            for p in self._peers.values()
            if p.state is PeerState.DEAD and now - p.last_seen >= self.forget_after
        ]
        for peer in gone:
            self._set(peer, None, now)
        return [p.id for p in gone]

    # What others ask of the table.

    def lift_quarantine(self, peer_id: str) -> None:
        """
        An operator registers C{peer_id} again: its quarantine ends.
        """
        self._quarantined.pop(peer_id, None)

    def is_quarantined(self, peer_id: str, now: float) -> bool:
        until = self._quarantined.get(peer_id)
        return until is not None and until > now

    def get(self, peer_id: str) -> Peer | None:
        return self._peers.get(peer_id)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def live(self) -> list[str]:
        """
        The peers believed alive (alive or only suspect), sorted: the ones
        we list, replicate to and gossip with.
        """
        if self._live is None:
            self._live = sorted(p.id for p in self._peers.values() if p.state is not PeerState.DEAD)
        return list(self._live)

    def known(self) -> list[str]:
        """
        Every peer in the table, dead ones included: the ones we probe.
        """
        return sorted(self._peers)

    def peers(self) -> list[Peer]:
        return [self._peers[k] for k in sorted(self._peers)]

    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in PeerState}
        for peer in self._peers.values():
            counts[peer.state.value] += 1
        return counts
