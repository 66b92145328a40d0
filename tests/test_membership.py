"""
Tests for dcounter.membership: the peer table and its state transitions.
"""

from __future__ import annotations

from dcounter.membership import Membership, PeerState

ALIVE, SUSPECT, DEAD = PeerState.ALIVE, PeerState.SUSPECT, PeerState.DEAD
SELF = "10.0.0.1:8080"
A = "10.0.0.2:8080"
B = "10.0.0.3:8080"


class Recorder:
    """A membership listener that records every call."""

    def __init__(self, membership: Membership) -> None:
        self.events: list[tuple[str, PeerState | None, PeerState | None]] = []
        membership.subscribe(self)

    def __call__(self, peer, old, new):
        self.events.append((peer, old, new))

    def take(self):
        events, self.events = self.events, []
        return events


def table(**kwargs) -> tuple[Membership, Recorder]:
    membership = Membership(SELF, **kwargs)
    return membership, Recorder(membership)


# Admission.


def test_heard_from_admits_a_new_peer_alive():
    """A peer heard from enters the table alive, with its incarnation."""
    m, rec = table()
    m.heard_from(A, 5.0, incarnation="inc1")
    peer = m.get(A)
    assert peer is not None
    assert peer.state is ALIVE
    assert (peer.since, peer.last_seen, peer.failures, peer.incarnation) == (5.0, 5.0, 0, "inc1")
    assert A in m
    assert rec.take() == [(A, None, ALIVE)]


def test_heard_from_an_alive_peer_is_not_a_transition():
    """Hearing again from an alive peer updates last_seen, calls no listener."""
    m, rec = table()
    m.heard_from(A, 1.0, incarnation="inc1")
    rec.take()
    m.heard_from(A, 7.0)
    peer = m.get(A)
    assert peer.last_seen == 7.0
    assert peer.since == 1.0
    assert peer.incarnation == "inc1"  # None does not erase a known incarnation
    assert rec.take() == []
    m.heard_from(A, 8.0, incarnation="inc2")
    assert m.get(A).incarnation == "inc2"
    assert rec.take() == []


def test_failed_for_an_unknown_peer():
    """A failed probe of a peer not in the table returns None and adds nothing."""
    m, rec = table()
    assert m.failed(A, 1.0) is None
    assert A not in m
    assert rec.take() == []


# What the protocol decides (dcounter.swim), recorded.


def test_failed_only_counts():
    """A failed probe is counted; the state is the protocol's to change."""
    m, rec = table()
    m.heard_from(A, 0.0)
    rec.take()
    assert m.failed(A, 1.0) is ALIVE
    assert m.failed(A, 2.0) is ALIVE
    assert m.get(A).failures == 2
    assert rec.take() == []


def test_mark_changes_state_and_raises_generation():
    """mark() sets a state (a transition for listeners) and never lowers the generation."""
    m, rec = table()
    m.heard_from(A, 0.0, incarnation="i1", generation=2)
    rec.take()
    assert m.mark(A, SUSPECT, 1.0, generation=1) is True
    assert (m.get(A).state, m.get(A).since, m.get(A).generation) == (SUSPECT, 1.0, 2)
    assert m.mark(A, SUSPECT, 2.0) is False  # no change, no new since
    assert m.get(A).since == 1.0
    assert m.mark(A, DEAD, 3.0, generation=4) is True
    assert m.get(A).generation == 4
    assert rec.take() == [(A, ALIVE, SUSPECT), (A, SUSPECT, DEAD)]
    assert m.mark(B, DEAD, 3.0) is False  # unknown: nothing added
    assert B not in m


def test_success_resets_failures():
    """An answer resets the count of failed probes."""
    m, rec = table()
    m.heard_from(A, 0.0)
    m.failed(A, 1.0)
    m.heard_from(A, 2.0)
    assert m.get(A).failures == 0


def test_new_boot_counts_generations_from_zero():
    """A new incarnation (boot) of a peer starts again at generation 0."""
    m, _ = table()
    m.heard_from(A, 0.0, incarnation="i1", generation=5)
    m.heard_from(A, 1.0, incarnation="i1", generation=3)
    assert m.get(A).generation == 5
    m.heard_from(A, 2.0, incarnation="i2")
    assert m.get(A).generation == 0


def test_dead_peer_is_readmitted_by_heard_from():
    """A dead peer that answers again is alive, with failures reset."""
    m, rec = table()
    m.heard_from(A, 0.0)
    m.mark(A, DEAD, 2.0)
    rec.take()
    m.heard_from(A, 10.0, incarnation="new")
    peer = m.get(A)
    assert (peer.state, peer.failures, peer.since, peer.last_seen) == (ALIVE, 0, 10.0, 10.0)
    assert peer.incarnation == "new"
    assert m.live() == [A]
    assert rec.take() == [(A, DEAD, ALIVE)]


# Views of the table.


def test_live_known_and_counts():
    """live() lists alive and suspect peers, known() all of them, counts() per state."""
    m, _ = table()
    c = "10.0.0.4:8080"
    for peer in (B, A, c):
        m.heard_from(peer, 0.0)
    m.mark(B, SUSPECT, 1.0)
    m.failed(c, 1.0)
    m.failed(c, 2.0)
    m.mark(c, DEAD, 2.0)
    assert m.live() == [A, B]
    assert m.known() == [A, B, c]
    assert m.counts() == {"alive": 1, "suspect": 1, "dead": 1}
    assert [p.id for p in m.peers()] == [A, B, c]
    assert m.get(c).as_json() == {
        "id": c,
        "state": "dead",
        "since": 2.0,
        "last_seen": 0.0,
        "failures": 2,
        "incarnation": None,
        "generation": 0,
    }


def test_counts_of_an_empty_table():
    """An empty table counts zero in every state."""
    m, _ = table()
    assert m.counts() == {"alive": 0, "suspect": 0, "dead": 0}
    assert m.get(A) is None


# Removal and quarantine.


def test_remove_forgets_and_quarantines():
    """remove() drops the peer (listener sees it leave) and refuses it for a while."""
    m, rec = table(quarantine=60.0)
    m.heard_from(A, 0.0)
    rec.take()
    assert m.remove(A, 10.0) is True
    assert A not in m and m.known() == []
    assert rec.take() == [(A, ALIVE, None)]
    assert m.is_quarantined(A, 10.0)
    assert m.is_quarantined(A, 69.9)
    assert not m.is_quarantined(A, 70.0)
    assert rec.take() == []


def test_lift_quarantine():
    """lift_quarantine() ends a quarantine; a later removal starts a new one."""
    m, rec = table(quarantine=60.0)
    m.heard_from(A, 0.0)
    m.remove(A, 10.0)
    m.lift_quarantine(A)
    assert not m.is_quarantined(A, 11.0)
    m.heard_from(A, 11.0)
    m.remove(A, 12.0)
    assert m.is_quarantined(A, 13.0)


def test_remove_of_an_unknown_peer_changes_nothing():
    """Removing a peer not in the table returns False and quarantines nothing."""
    m, rec = table(quarantine=5.0)
    assert m.remove(B, 0.0) is False
    assert not m.is_quarantined(B, 1.0)
    assert rec.take() == []


def test_quarantine_ends_by_time_without_expire():
    """Once its time is up, a quarantined peer is admitted without force."""
    m, _ = table(quarantine=60.0)
    m.heard_from(A, 0.0)
    m.remove(A, 0.0)
    assert m.is_quarantined(A, 59.0)
    assert not m.is_quarantined(A, 60.0)


# Expiry.


def test_expire_forgets_dead_peers_after_forget_after():
    """Only dead peers silent for forget_after seconds are forgotten."""
    m, rec = table(forget_after=100.0)
    m.heard_from(A, 0.0)
    m.heard_from(B, 0.0)
    m.mark(A, DEAD, 2.0)  # last seen at 0
    m.mark(B, SUSPECT, 1.0)  # last seen at 0
    rec.take()
    assert m.expire(99.9) == []
    assert A in m
    assert m.expire(100.0) == [A]
    assert A not in m
    assert B in m  # suspect peers are never forgotten
    assert rec.take() == [(A, DEAD, None)]
    assert m.expire(1000.0) == []
    assert m.known() == [B]


def test_expire_counts_from_last_seen():
    """A dead peer heard from recently is not forgotten too soon."""
    m, _ = table(forget_after=100.0)
    m.heard_from(A, 0.0)
    m.heard_from(A, 50.0)
    m.mark(A, DEAD, 52.0)
    assert m.expire(149.0) == []
    assert m.expire(150.0) == [A]


def test_expire_ends_quarantines():
    """expire() drops finished quarantines and keeps running ones."""
    m, _ = table(quarantine=10.0)
    m.heard_from(A, 0.0)
    m.heard_from(B, 0.0)
    m.remove(A, 0.0)
    m.remove(B, 5.0)
    m.expire(10.0)
    assert not m.is_quarantined(A, 10.0)
    assert m.is_quarantined(B, 10.0)


def test_forgotten_peer_can_return():
    """A forgotten peer is admitted again as new when it is heard from."""
    m, rec = table(forget_after=10.0)
    m.heard_from(A, 0.0)
    m.mark(A, DEAD, 2.0)
    m.expire(10.0)
    rec.take()
    m.heard_from(A, 11.0)
    assert m.get(A).failures == 0
    assert rec.take() == [(A, None, ALIVE)]


def test_every_listener_sees_every_transition():
    """All subscribed listeners are called, in order, for each transition."""
    m = Membership(SELF)
    calls: list[str] = []
    m.subscribe(lambda *event: calls.append(f"first {event[0]}"))
    m.subscribe(lambda *event: calls.append(f"second {event[0]}"))
    m.heard_from(A, 0.0)
    m.heard_from(A, 1.0)  # no transition
    assert calls == [f"first {A}", f"second {A}"]


def test_heard_from_directly_outranks_the_rumors_of_its_death():
    """
    A suspect or dead peer heard from again (same boot) goes one generation
    up: the stale rumors of its death no longer hold.
    """
    m, _ = table()
    m.heard_from(A, 0.0, incarnation="i1", generation=2)
    m.mark(A, DEAD, 1.0)
    m.heard_from(A, 2.0, incarnation="i1", generation=2)
    assert (m.get(A).state, m.get(A).generation) == (ALIVE, 3)
    m.heard_from(A, 3.0, incarnation="i1")  # alive already: no change
    assert m.get(A).generation == 3
    m.mark(A, SUSPECT, 4.0)
    m.heard_from(A, 5.0, incarnation="i1", generation=7)  # a higher generation of its own
    assert m.get(A).generation == 7
