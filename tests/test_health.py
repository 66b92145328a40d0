"""
The health checker on a Clock: probes, suspicion and death, re-admission,
seeds, and admission's conditions.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from dcounter.client import PeerClient
from dcounter.health import AdmissionError, HealthChecker
from dcounter.membership import Membership, PeerState
from dcounter.node import Node
from dcounter.store import MemoryStore
from dcounter.tap import health_services
from tests.support import CLUSTER, Network, TestNode, failure_of, result_of


def probes(net: Network, to: str) -> int:
    return len(net.requests("GET", "/health", to=to))


def state(node: TestNode, peer: str) -> PeerState | None:
    p = node.membership.get(peer)
    return None if p is None else p.state


@pytest.fixture
def net() -> Network:
    return Network()


def test_peer_that_stops_answering_becomes_suspect_then_dead(net: Network) -> None:
    """
    A refused probe (and no one to ask in a cluster of two) makes a peer
    suspect; the suspicion ends after 2 periods (suspicion_mult 2, log10 of
    2 < 1): dead, it leaves /peers.
    """
    a, b = net.add_many(2)
    net.mesh()
    a.start_health()
    net.settle()
    assert state(a, b.id) is PeerState.ALIVE
    net.cut(b.id)
    net.advance(1.0)
    assert state(a, b.id) is PeerState.SUSPECT
    assert net.call("GET", a.id, "/peers").json == [b.id]  # suspect: still listed
    net.advance(1.75)
    assert state(a, b.id) is PeerState.SUSPECT
    net.advance(0.25)
    assert state(a, b.id) is PeerState.DEAD
    assert net.call("GET", a.id, "/peers").json == []
    a.stop_health()


def test_peer_that_hangs_is_failed_by_timeout(net: Network) -> None:
    """A probe that gets no answer times out on the clock and counts as failed."""
    a, b = net.add_many(2)
    net.mesh()
    net.hold(b.id)
    a.health.check_once()
    net.settle()
    assert state(a, b.id) is PeerState.ALIVE  # the probe is still waiting
    net.advance(1.0)
    assert state(a, b.id) is PeerState.SUSPECT


def test_one_probe_at_a_time(net: Network) -> None:
    """A peer whose probe is unanswered is not probed again meanwhile."""
    a, b = net.add_many(2, timeout=10.0)
    net.mesh()
    net.hold(b.id)
    before = probes(net, b.id)
    for _ in range(3):
        a.health.check_once()
        net.settle()
    assert probes(net, b.id) == before + 1


def test_dead_peer_that_answers_again_is_readmitted(net: Network) -> None:
    """A dead peer is still probed, and is alive again once it answers."""
    a, b = net.add_many(2)
    net.mesh()
    a.start_health()
    net.cut(b.id)
    net.advance(4.0)
    assert state(a, b.id) is PeerState.DEAD
    net.heal(b.id)
    net.advance(1.0)
    assert state(a, b.id) is PeerState.ALIVE
    assert net.call("GET", a.id, "/peers").json == [b.id]
    a.stop_health()


def test_dead_peer_is_forgotten(net: Network) -> None:
    """A peer dead for forget_after seconds leaves the table."""
    a, b = net.add_many(2, forget_after=10.0)
    net.mesh()
    a.start_health()
    net.cut(b.id)
    net.advance(4.0)
    assert state(a, b.id) is PeerState.DEAD
    net.advance(10.0)
    assert b.id not in a.membership
    a.stop_health()


def test_seeds_are_admitted(net: Network) -> None:
    """A seed that answers is admitted at start."""
    b = net.add(9002)
    a = net.add(9001, seeds=[b.id])
    a.start_health()
    net.settle()
    assert a.membership.live() == [b.id]
    a.stop_health()


def test_seeds_are_retried_until_they_answer(net: Network) -> None:
    """A seed that does not answer yet is tried again every interval."""
    b = net.add(9002)
    a = net.add(9001, seeds=[b.id])
    net.cut(b.id)
    a.start_health()
    net.advance(3.0)
    assert a.membership.known() == []
    assert probes(net, b.id) == 4  # at start, then once a second
    net.heal(b.id)
    net.advance(1.0)
    assert a.membership.live() == [b.id]
    a.stop_health()


def test_an_unreachable_seed_is_logged_once_until_it_answers(net: Network) -> None:
    """One warning after three failed tries in a row (not at start), one line when it answers."""
    b = net.add(9002)
    a = net.add(9001, seeds=[b.id])
    net.cut(b.id)
    with capturedLogs() as events:
        for _ in range(6):
            a.health.check_once()
            net.settle()
        warnings = [formatEvent(e) for e in events if e["log_level"] is LogLevel.warn]
        assert warnings == [
            f"seed unreachable: {b.id} did not answer as a dcounter node: "
            f"Connection was refused by other side: {b.id}. (retrying every 1.0 s until it answers)"
        ]
        net.heal(b.id)
        a.health.check_once()
        net.settle()
    assert f"seed {b.id} answered as {b.id}" in [formatEvent(e) for e in events]


def test_seed_by_another_name(net: Network) -> None:
    """A seed whose node has another id is admitted under that id, and not retried once known."""
    b = net.add(9002)
    net.alias("localhost:9002", b)
    a = net.add(9001, seeds=["localhost:9002"])
    a.start_health()
    net.settle()
    assert a.membership.live() == [b.id]
    net.advance(3.0)
    assert probes(net, "localhost:9002") == 1  # known: the peer is probed by its id
    assert probes(net, b.id) >= 3
    a.stop_health()


def test_admission_refuses_another_node_id(net: Network) -> None:
    """Admitting an address that answers as another node fails when an id is expected."""
    a, b = net.add_many(2)
    net.alias("127.0.0.1:9500", b)
    d = a.health.admit("127.0.0.1:9500", expected_id="127.0.0.1:9500")
    net.settle()
    failure = failure_of(d)
    assert failure.check(AdmissionError)
    assert b.id not in str(failure.value)  # never what the host answered
    assert a.membership.known() == []


def test_admission_refuses_another_cluster(net: Network) -> None:
    """A node of another cluster is never admitted."""
    a = net.add(9001)
    other = net.add(9002, cluster="elsewhere")
    d = a.health.admit(other.id)
    net.settle()
    assert failure_of(d).check(AdmissionError)
    assert a.membership.known() == []


def test_admission_refuses_ourselves(net: Network) -> None:
    """An address that answers as this node is never admitted, by any name."""
    a = net.add(9001)
    net.alias("localhost:9001", a)
    for name in (a.id, "localhost:9001"):
        d = a.health.admit(name)
        net.settle()
        assert "this node" in str(failure_of(d).value)
    assert a.membership.known() == []


def test_admission_refuses_what_does_not_answer(net: Network) -> None:
    """An address where nothing answers is not admitted."""
    a = net.add(9001)
    d = a.health.admit("127.0.0.1:9999")
    net.settle()
    assert failure_of(d).check(AdmissionError)
    assert a.membership.known() == []


def test_admission_respects_quarantine_unless_forced(net: Network) -> None:
    """A removed peer is not admitted while quarantined, except by force."""
    a, b = net.add_many(2)
    a.membership.heard_from(b.id, net.clock.seconds())
    a.membership.remove(b.id, net.clock.seconds())
    d = a.health.admit(b.id)
    net.settle()
    assert "quarantined" in str(failure_of(d).value)
    d = a.health.admit(b.id, force=True)
    net.settle()
    assert result_of(d) == b.id
    assert a.membership.live() == [b.id]


def test_admission_counts(net: Network) -> None:
    """Admissions that succeed and fail are counted."""
    a, b = net.add_many(2)
    a.health.admit(b.id)
    a.health.admit("127.0.0.1:9999").addErrback(lambda f: None)
    net.settle()
    assert a.health.admissions == {"admitted": 1, "rejected": 1, "dropped": 0}


def test_consider_admits(net: Network) -> None:
    """consider() of an address that answers as itself admits it, after a probe."""
    a, b = net.add_many(2)
    a.health.consider(b.id)
    net.settle()
    assert probes(net, b.id) == 1
    assert a.membership.live() == [b.id]


def test_consider_rate_limits_after_failure(net: Network) -> None:
    """After a failed admission, the same address is not probed again for a while."""
    a, b = net.add_many(2, health_interval=1.0)
    net.cut(b.id)
    a.health.consider(b.id)
    net.settle()
    assert probes(net, b.id) == 1
    net.heal(b.id)
    for _ in range(5):
        a.health.consider(b.id)
    net.advance(1.0)
    a.health.consider(b.id)
    net.settle()
    assert probes(net, b.id) == 1
    assert b.id not in a.membership
    net.advance(3.0)
    a.health.consider(b.id)
    net.settle()
    assert probes(net, b.id) == 2
    assert a.membership.live() == [b.id]


def test_consider_contact_bypasses_rate_limit(net: Network) -> None:
    """A node that contacts us itself is probed even right after a failed probe."""
    a, b = net.add_many(2)
    net.cut(b.id)
    a.health.consider(b.id)
    net.settle()
    net.heal(b.id)
    a.health.consider(b.id, contact=True)
    net.settle()
    assert a.membership.live() == [b.id]


def test_contact_during_a_failing_probe_probes_again(net: Network) -> None:
    """
    A node that contacts us while our probe of it is still out (and then
    fails: it was sent before the node was up) is probed once more at once,
    not after the rate limit; whichever path started the probe.
    """
    a, b, c = net.add_many(3)
    net.hold(b.id)
    net.hold(c.id)
    a.health.consider(b.id)
    a.health.admit(c.id).addErrback(lambda f: None)  # as for a seed or /register
    net.settle()
    a.health.consider(b.id, contact=True)
    a.health.consider(c.id, contact=True)
    net.advance(3.0)  # both probes time out
    assert probes(net, b.id) == probes(net, c.id) == 2
    net.release(b.id)
    net.release(c.id)
    net.settle()
    assert a.membership.live() == [b.id, c.id]
    assert a.health._contacted == set()


def test_consider_one_probe_at_a_time(net: Network) -> None:
    """While an address is being probed, considering it again sends nothing."""
    a, b = net.add_many(2)
    net.hold(b.id)
    for _ in range(4):
        a.health.consider(b.id)
    net.settle()
    assert probes(net, b.id) == 1
    net.release(b.id)
    assert a.membership.live() == [b.id]


def test_consider_bounds_admissions_in_flight(net: Network) -> None:
    """
    A flood of names heard of opens at most MAX_CANDIDATES probes at once;
    the other names wait their turn, in the order heard, and are all
    probed as slots come free.
    """
    a, *others = net.add_many(1 + HealthChecker.MAX_CANDIDATES + 10)
    limit = a.health.MAX_CANDIDATES
    flood = [other.id for other in others]
    for address in flood:
        net.hold(address)
    for address in flood:
        a.health.consider(address)
    net.settle()
    assert [address for address in flood if probes(net, address)] == flood[:limit]
    net.release(flood[0])  # one answer frees one slot: the next name heard
    net.settle()
    assert [address for address in flood if probes(net, address)] == flood[: limit + 1]
    for address in flood:
        net.release(address)
        net.settle()
    assert sorted(a.membership.live()) == sorted(flood)
    assert a.health.admissions["dropped"] == 0


def test_a_probe_still_out_keeps_its_name_from_a_third(net: Network) -> None:
    """
    An operator's /register of a name whose probe is out starts a second
    probe.  If that one fails first, the first still holds the name:
    hearing of it again starts no third probe, and the first admits it.
    """
    a, b = net.add_many(2)
    net.hold(b.id)
    a.health.consider(b.id)
    net.settle()
    net.cut_link(a.id, b.id)  # the operator's probe is refused at once
    registered = a.health.admit(b.id, expected_id=b.id, force=True)
    net.settle()
    assert isinstance(failure_of(registered).value, AdmissionError)
    net.links_down.clear()
    a.health.consider(b.id, contact=True)
    net.settle()
    assert probes(net, b.id) == 2  # the first, held, and the operator's, refused: no third
    net.release(b.id)
    net.settle()
    assert a.membership.live() == [b.id]
    assert a.health.admission.room()


def test_a_stopping_node_starts_no_admission_probe(net: Network) -> None:
    """
    Once its health services stop (before HTTP and the last push), a node
    probes no name heard of, nor any name waiting for a probe slot; probes
    already out end as they will.  Started again, it takes the waiting
    names first, and admits as before.
    """
    a, b, late, *held = net.add_many(3 + HealthChecker.MAX_CANDIDATES)
    a.start_health()
    for node in held:
        net.hold(node.id)
        a.health.consider(node.id)
    a.health.consider(late.id)  # waits: the slots are full
    net.settle()
    a.stop_health()
    a.health.consider(b.id, contact=True)
    for node in held:
        net.release(node.id)
    net.settle()
    assert probes(net, b.id) == probes(net, late.id) == 0
    assert sorted(a.membership.live()) == sorted(node.id for node in held)
    a.start_health()
    net.settle()
    assert late.id in a.membership.live()
    a.health.consider(b.id)
    net.settle()
    assert b.id in a.membership.live()
    a.stop_health()


def test_names_that_fail_at_once_do_not_pile_up_calls_nor_hold_slots(net: Network) -> None:
    """
    Hundreds of waiting names whose probes fail before they are sent (no
    such node) are taken one after another, not from inside each other's
    failure: the probe slots all come back, and a real node heard of after
    them is admitted.
    """
    a, late, *held = net.add_many(2 + HealthChecker.MAX_CANDIDATES)
    for node in held:
        net.hold(node.id)
        a.health.consider(node.id)
    ghosts = [f"10.99.{i // 250}.{i % 250}:7000" for i in range(600)]
    for address in [*ghosts, late.id]:
        a.health.consider(address)
    for node in held:
        net.release(node.id)
    net.settle()
    assert late.id in a.membership.live()
    assert a.health.admission.room()
    assert a.health.admissions["rejected"] == len(ghosts)


def test_probe_answered_by_another_node_counts_as_failed(net: Network) -> None:
    """A peer whose address now answers as a different node id has failed its probe."""
    a, b, c = net.add_many(3)
    net.mesh([a, b])
    net.nodes[b.id] = c  # b's address now answers as c
    a.health.check_once()
    net.settle()
    assert state(a, b.id) is PeerState.SUSPECT
    assert a.membership.get(b.id).failures == 1
    assert c.id not in a.membership


def test_probe_answered_by_another_cluster_counts_as_failed(net: Network) -> None:
    """A peer whose address now answers for another cluster has failed its probe."""
    a, b = net.add_many(2)
    net.mesh()
    impostor = net.add(9003, cluster="other")
    net.nodes[b.id] = impostor
    impostor.node.identity = b.node.identity  # same id and incarnation, other cluster
    a.health.check_once()
    net.settle()
    assert state(a, b.id) is PeerState.SUSPECT


def test_probe_records_incarnation(net: Network) -> None:
    """A probe's answer updates the peer's incarnation."""
    a, b = net.add_many(2)
    a.membership.heard_from(b.id, 0.0, "old")
    net.settle()
    a.health.check_once()
    net.settle()
    assert a.membership.get(b.id).incarnation == b.node.identity.incarnation


class _BrokenMembership(Membership):
    def __init__(self, self_id: str) -> None:
        super().__init__(self_id)
        self.rounds = 0

    def expire(self, now: float) -> list[str]:
        self.rounds += 1
        raise RuntimeError("broken table")


class _FailingClient(PeerClient):
    """A client whose every probe fails with an unexpected error."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(None, clock)
        self.asked: list[str] = []

    def hello(self, address: str, timeout: float | None = None) -> Any:
        self.asked.append(address)
        return fail(RuntimeError("broken client"))


def test_check_once_never_raises() -> None:
    """A round that fails inside logs and returns; the loop keeps running."""
    clock = Clock()
    store = MemoryStore("127.0.0.1:9001")
    membership = _BrokenMembership(store.identity.node_id)
    node = Node(store, CLUSTER, clock)
    health = HealthChecker(node, membership, PeerClient(None, clock), clock, interval=1.0)
    health.check_once()
    timers = health_services(health, clock)
    for timer in timers:
        timer.startService()
    clock.advance(1.0)
    clock.advance(1.0)
    assert membership.rounds == 4
    for timer in timers:
        timer.stopService()


def test_check_once_survives_a_failing_client() -> None:
    """Unexpected probe errors fail the peer and the seed, and later rounds go on."""
    clock = Clock()
    store = MemoryStore("127.0.0.1:9001")
    membership = Membership(store.identity.node_id)
    membership.heard_from("127.0.0.1:9002", 0.0)
    node = Node(store, CLUSTER, clock)
    client = _FailingClient(clock)
    health = HealthChecker(node, membership, client, clock, seeds=["127.0.0.1:9003"])
    health.check_once()
    health.check_once()
    assert membership.get("127.0.0.1:9002").failures == 2
    assert health.admissions == {"admitted": 0, "rejected": 2, "dropped": 0}
    assert client.asked == ["127.0.0.1:9002", "127.0.0.1:9003"] * 2
