"""
Admission, the one home of who may become a peer: pure, time passed in.
"""

from __future__ import annotations

import pytest

from dcounter.admission import Admission, AdmissionError
from dcounter.keyring import Keyring
from dcounter.membership import Membership, PeerState
from dcounter.wire import Hello

SELF = "10.0.0.1:8080"
A = "10.0.0.2:8080"
CLUSTER = "c1"


def admission(**kw: object) -> Admission:
    return Admission(Membership(SELF, quarantine=60.0), CLUSTER, retry_after=3.0, **kw)  # type: ignore[arg-type]


def hello(node_id: str = A, cluster: str = CLUSTER, signed_by: str | None = None) -> Hello:
    return Hello(node_id, "inc", cluster, signed_by=signed_by)


def test_self_is_never_probed_nor_admitted():
    adm = admission()
    assert adm.refusal(SELF, 0.0, force=True) == f"{SELF} is this node"
    assert not adm.should_probe(SELF, 0.0, contact=True)
    with pytest.raises(AdmissionError):
        adm.check(SELF, hello(SELF))
    assert not adm.is_member(SELF)


def test_quarantined_is_refused_unless_forced():
    adm = admission()
    adm.membership.heard_from(A, 0.0)
    adm.membership.remove(A, 0.0)
    assert not adm.should_probe(A, 1.0, contact=True)
    with pytest.raises(AdmissionError, match="quarantined"):
        adm.admit(A, hello(), 1.0)
    assert adm.admit(A, hello(), 1.0, force=True) == A  # an operator's /register
    assert adm.is_member(A)
    assert not adm.membership.is_quarantined(A, 1.0)


def test_quarantine_ends_by_time():
    adm = admission()
    adm.membership.heard_from(A, 0.0)
    adm.membership.remove(A, 0.0)
    assert adm.refusal(A, 59.9) is not None
    assert adm.refusal(A, 60.0) is None
    assert adm.should_probe(A, 60.0)


def test_answer_must_be_the_claimed_node_of_this_cluster():
    adm = admission()
    with pytest.raises(AdmissionError) as e:
        adm.check(A, hello("10.0.0.9:1"), expected_id=A)
    assert "10.0.0.9" not in str(e.value)  # what the host said is never repeated
    with pytest.raises(AdmissionError) as e:
        adm.check(A, hello(cluster="secret-name"))
    assert "secret-name" not in str(e.value)
    adm.check(A, hello(), expected_id=A)


def test_with_a_key_only_a_signed_answer_admits():
    adm = admission(keyring=Keyring(["k" * 16]))
    with pytest.raises(AdmissionError, match="MAC"):
        adm.check(A, hello())
    adm.check(A, hello(signed_by="k1"))


def test_failed_probe_holds_a_name_off_for_retry_after_unless_it_contacts_us():
    adm = admission()
    assert adm.should_probe(A, 0.0)
    adm.probing(A)
    assert not adm.should_probe(A, 0.0, contact=True)  # one at a time
    adm.done(A, False, 1.0)
    assert adm.counts == {"admitted": 0, "rejected": 1, "dropped": 0}
    assert not adm.should_probe(A, 3.9)
    assert adm.should_probe(A, 3.9, contact=True)
    adm.expire(4.0)
    assert adm.should_probe(A, 4.0)


def test_an_operators_failed_registration_is_not_held_against_a_name():
    adm = admission()
    adm.probing(A)
    adm.done(A, False, 1.0, penalize=False)
    assert adm.should_probe(A, 1.0)


def test_a_second_probe_of_a_name_holds_its_own_slot_until_it_ends():
    """An operator's /register of a name being probed: both probes hold a slot."""
    adm = admission()
    names = fill_probe_slots(adm)
    adm.probing(names[0])  # the operator's, past the bound: theirs is not refused
    adm.done(names[0], False, 1.0)
    assert not adm.room()  # the operator's probe is still out
    assert not adm.should_probe(names[0], 1.0, contact=True)
    adm.done(names[0], True, 2.0, penalize=False)
    assert adm.room()
    assert adm.should_probe("10.0.2.1:1", 2.0)


def fill_probe_slots(adm: Admission) -> list[str]:
    names = [f"10.0.1.{i}:1" for i in range(Admission.MAX_CANDIDATES)]
    for name in names:
        assert adm.should_probe(name, 0.0)
        adm.probing(name)
    return names


def test_probes_in_flight_are_bounded_and_the_others_wait_in_order():
    """
    Past MAX_CANDIDATES, names wait: those that contacted us first (a name
    heard of that then contacts us moves to their line), then the others,
    each line in the order heard.
    """
    adm = admission()
    first, *_ = fill_probe_slots(adm)
    assert not adm.room()
    assert not adm.should_probe("10.0.2.1:1", 0.0)
    assert not adm.should_probe("10.0.2.2:1", 0.0)
    assert not adm.should_probe("10.0.2.3:1", 0.1, contact=True)
    assert not adm.should_probe("10.0.2.2:1", 0.2, contact=True)
    assert not adm.should_probe("10.0.2.1:1", 0.3)  # heard again: keeps its place
    assert not adm.should_probe("10.0.2.3:1", 0.4)  # still among those that contacted us
    adm.done(first, True, 1.0)
    assert adm.room()
    assert adm.next_waiting(1.0) == ("10.0.2.3:1", True)
    assert adm.next_waiting(1.0) == ("10.0.2.2:1", True)
    assert adm.next_waiting(1.0) == ("10.0.2.1:1", False)
    assert adm.next_waiting(1.0) is None
    assert adm.counts["dropped"] == 0


def test_waiting_names_are_bounded_in_number_and_in_time():
    adm = admission()
    fill_probe_slots(adm)
    for i in range(Admission.MAX_WAITING + 5):
        assert not adm.should_probe(f"10.1.{i // 250}.{i % 250}:1", 0.0)
    assert adm.counts["dropped"] == 5
    later = Admission.WAIT_AT_MOST + 1
    assert adm.next_waiting(later) is None  # every one waited too long
    assert adm.counts["dropped"] == 5 + Admission.MAX_WAITING
    assert not adm.should_probe("10.9.9.9:1", later)
    assert adm.next_waiting(later) == ("10.9.9.9:1", False)


def test_a_name_waiting_in_one_line_is_not_dropped_when_the_other_is_full():
    adm = admission()
    fill_probe_slots(adm)
    assert not adm.should_probe("10.0.3.1:1", 0.0, contact=True)
    assert not adm.should_probe("10.0.3.2:1", 0.0)
    for i in range(Admission.MAX_WAITING - 1):
        adm.should_probe(f"10.1.{i // 250}.{i % 250}:1", 0.0)
        adm.should_probe(f"10.2.{i // 250}.{i % 250}:1", 0.0, contact=True)
    assert adm.counts["dropped"] == 0
    assert not adm.should_probe("10.0.3.1:1", 1.0)  # waits on among those that contacted us
    assert not adm.should_probe("10.0.3.2:1", 1.0, contact=True)  # no room there: waits on where it is
    assert adm.counts["dropped"] == 0
    assert adm.next_waiting(1.0) == ("10.0.3.1:1", True)


def test_a_full_line_of_stale_names_makes_room_for_a_new_one():
    """Names that waited too long leave the line as soon as a new one needs their place."""
    adm = admission()
    fill_probe_slots(adm)
    for i in range(Admission.MAX_WAITING):
        adm.should_probe(f"10.1.{i // 250}.{i % 250}:1", 0.0)
    later = Admission.WAIT_AT_MOST + 1
    assert not adm.should_probe("10.9.9.9:1", later)
    assert adm.counts["dropped"] == Admission.MAX_WAITING
    assert adm.next_waiting(later) == ("10.9.9.9:1", False)


def test_members_are_names_in_the_table():
    adm = admission()
    assert not adm.is_member(A)
    adm.admit(A, hello(), 0.0)
    assert adm.is_member(A)
    assert not adm.should_probe(A, 0.0)  # known: left to the health checker
    adm.membership.mark(A, PeerState.DEAD, 2.0)
    assert adm.is_member(A)  # dead, but admitted: its sync brings it back
