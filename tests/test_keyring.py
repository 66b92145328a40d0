"""
The keyring, the replay window and the guard: pure, time passed in.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcounter import keyring, wire
from dcounter.keyring import Guard, Keyring, KeyringError, Refused, ReplayWindow

A = "key-A-0123456789abcdef"
B = "key-B-fedcba9876543210"
ME = "10.0.0.1:8080"
PEER = "10.0.0.2:8080"
CTX = keyring.request_context("POST", "/sync", ME)


def test_key_ids_are_stable_and_public():
    assert keyring.key_id(A.encode()) == keyring.key_id(A.encode())
    assert keyring.key_id(A.encode()) != keyring.key_id(B.encode())
    assert len(keyring.key_id(A.encode())) == 8
    assert A not in keyring.key_id(A.encode())


def test_short_keys_are_refused_and_change_nothing():
    ring = Keyring([A])
    with pytest.raises(KeyringError):
        ring.set([B, "short"])
    assert ring.ids == [keyring.key_id(A.encode())]


def test_first_key_signs_every_key_verifies():
    ring = Keyring([A, B, A])
    assert ring.ids == [keyring.key_id(A.encode()), keyring.key_id(B.encode())]
    assert ring.signing_id == keyring.key_id(A.encode())
    assert Keyring().enabled is False and Keyring().signing_id is None


def test_admin_token_is_derived_from_the_signing_key():
    assert Keyring().admin_token() is None
    token = Keyring([A]).admin_token()
    assert token == Keyring([A, B]).admin_token() != Keyring([B, A]).admin_token()
    assert token is not None and A not in token and len(token) == 64


def test_keys_from_file():
    assert keyring.keys_from_file(f"# keys\n\n  {A}  \n{B}\n") == [A, B]


def test_admin_token_command(tmp_path, capsys):
    path = tmp_path / "keys"
    path.write_text(f"{A}\n{B}\n")
    assert keyring.main(["admin-token", str(path)]) == 0
    assert capsys.readouterr().out.strip() == Keyring([A]).admin_token()
    assert keyring.main(["nonsense"]) == 2


# The replay window (RFC 4303 section 3.4.3).


def test_window_accepts_new_and_refuses_seen():
    w = ReplayWindow(size=64)
    for seq in (100, 101, 99, 150):
        assert w.accepts(seq)
        w.record(seq)
        assert not w.accepts(seq)
    assert w.accepts(120)  # out of order, within the window, not seen
    assert not w.accepts(150 - 64)  # fell out of the window
    assert w.accepts(150 - 63)


def test_window_jump_larger_than_its_size_forgets_all_below():
    w = ReplayWindow(size=8)
    w.record(1)
    w.record(1000)
    assert not w.accepts(1)
    assert w.accepts(999) and not w.accepts(1000)


@given(st.lists(st.integers(0, 300), max_size=200))
def test_window_never_accepts_a_number_twice(seqs):
    w = ReplayWindow(size=32)
    accepted = []
    for seq in seqs:
        if w.accepts(seq):
            w.record(seq)
            accepted.append(seq)
    assert len(accepted) == len(set(accepted))
    # and it refuses only the seen or the too old
    for seq in set(seqs) - set(accepted):
        assert seq in accepted or seq <= max(accepted) - 32


# The guard.


def sender(keys=(A,), now=1000.0) -> tuple[Guard, wire.Auth, bytes]:
    guard = Guard(Keyring(keys), PEER)
    body = b'{"x":1}'
    return guard, guard.seal(CTX, body, now), body


def refused(guard: Guard, auth, body, ctx=CTX, now=1000.0, **kw) -> str:
    with pytest.raises(Refused) as e:
        guard.check("http", ctx, auth, body, now, **kw)
    return e.value.reason


def test_a_sealed_message_checks_once():
    _, auth, body = sender()
    receiver = Guard(Keyring([A]), ME)
    receiver.check("http", CTX, auth, body, 1000.0)
    assert refused(receiver, auth, body) == "replayed"
    assert receiver.accepted["http"] == 1
    assert receiver.dropped["http"] == {"replayed": 1}


def test_every_part_is_covered():
    _, auth, body = sender()
    receiver = Guard(Keyring([A]), ME)
    assert refused(receiver, auth, body + b" ") == "bad_mac"
    assert (
        refused(receiver, auth, body, ctx=keyring.request_context("POST", "/sync", "10.0.0.3:8080"))
        == "bad_mac"
    )
    for change in ({"sender": "10.0.0.9:1"}, {"seq": auth.seq + 1}, {"timestamp": auth.timestamp + 1}):
        assert refused(receiver, dataclasses.replace(auth, **change), body) == "bad_mac"
    assert refused(receiver, None, body) == "unsigned"
    assert refused(Guard(Keyring([B]), ME), auth, body) == "unknown_key"
    assert refused(receiver, auth, body, now=1031.0) == "stale"
    receiver.check("http", CTX, auth, body, 970.0)  # within 30 s either way


def test_rotation_a_receiver_holding_both_keys_takes_either():
    receiver = Guard(Keyring([A, B]), ME)
    for keys in ((A,), (B, A), (B,)):
        _, auth, body = sender(keys)  # the sender restarts with new keys
        receiver.check("http", CTX, auth, body, 1000.0)


def test_sequence_numbers_are_dense_and_each_boot_has_its_own_window():
    """
    A restarted sender (a new boot, whatever its clock did) counts from 1
    again and is accepted; its old boot's messages are still refused.
    """
    first = Guard(Keyring([A]), PEER)
    old = [first.seal(CTX, b"", 5.0) for _ in range(3)]
    assert [a.seq for a in old] == [1, 2, 3]
    receiver = Guard(Keyring([A]), ME)
    for auth in old:
        receiver.check("http", CTX, auth, b"", 5.0)
    restarted = Guard(Keyring([A]), PEER)
    assert restarted.boot != first.boot
    receiver.check("http", CTX, restarted.seal(CTX, b"", 4.0), b"", 5.0)  # clock stepped back
    assert refused(receiver, old[0], b"", now=5.0) == "replayed"


def test_the_boot_is_covered_by_the_mac():
    _, auth, body = sender()
    receiver = Guard(Keyring([A]), ME)
    assert refused(receiver, dataclasses.replace(auth, boot="f" * 16), body) == "bad_mac"


def test_a_response_is_bound_to_its_request():
    _, request, body = sender()
    server = Guard(Keyring([A]), ME)
    answer = server.seal(keyring.response_context(200, request), b"{}", 1000.0)
    client = Guard(Keyring([A]), PEER)
    client.check("http", keyring.response_context(200, request), answer, b"{}", 1000.0, replay=False)
    other = dataclasses.replace(request, seq=request.seq + 1)
    assert refused(client, answer, b"{}", ctx=keyring.response_context(200, other), replay=False) == "bad_mac"


def test_sealing_without_a_key_is_an_error():
    with pytest.raises(KeyringError):
        Guard(Keyring(), ME).seal(CTX, b"", 0.0)


def test_windows_are_bounded():
    receiver = Guard(Keyring([A]), ME, max_senders=2)
    for i in range(5):
        g = Guard(Keyring([A]), f"10.0.0.{i + 2}:1")
        receiver.check(
            "udp", keyring.datagram_context(), g.seal(keyring.datagram_context(), b"", 1.0), b"", 1.0
        )
    assert len(receiver._windows) == 2


def test_an_active_sender_keeps_its_window():
    """The least recently heard-from sender is forgotten first, not the oldest."""
    receiver = Guard(Keyring([A]), ME, max_senders=2)
    ctx = keyring.datagram_context()
    active = Guard(Keyring([A]), "10.0.0.2:1")
    first = active.seal(ctx, b"", 1.0)
    receiver.check("udp", ctx, first, b"", 1.0)
    for i in range(3):
        receiver.check("udp", ctx, active.seal(ctx, b"", 1.0), b"", 1.0)
        other = Guard(Keyring([A]), f"10.0.1.{i}:1")
        receiver.check("udp", ctx, other.seal(ctx, b"", 1.0), b"", 1.0)
    with pytest.raises(Refused, match="replayed"):
        receiver.check("udp", ctx, first, b"", 1.0)
