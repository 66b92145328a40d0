"""
Anti-entropy by digest: the summaries (dcounter.digest), their wire formats
(fuzzed like every decoder in dcounter.wire), and rounds between in-memory
nodes that ship only what differs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.resource import Resource

from dcounter import digest, wire
from dcounter.idempotency import Entry, Record
from dcounter.replication import Replicator
from dcounter.wire import Digest, DigestReply, MalformedMessage
from tests.support import CLUSTER, Network
from tests.test_wire import addresses, counts, json_values, names, states, tokens

SIZE = digest.BUCKETS * digest.WIDTH

# The summaries.


@given(states)
def test_summary_does_not_depend_on_order(state):
    """Equal states have equal digests, however their maps are ordered."""
    reordered = {name: dict(reversed(list(slots.items()))) for name, slots in reversed(list(state.items()))}
    assert digest.summarize(state) == digest.summarize(reordered)
    assert len(digest.summarize(state)) == SIZE


def test_summary_tells_which_bucket_differs():
    """One slot grown changes the digest of its counter's bucket alone."""
    state = {f"c{i}": {"r1": (i, 0), "r2": (1, 1)} for i in range(1000)}
    before = digest.summarize(state)
    state["c7"] = {"r1": (8, 0), "r2": (1, 1)}
    assert digest.differing(before, digest.summarize(state)) == [digest.bucket_of("c7")]
    assert digest.differing(before, before) == []


def test_ahead_is_what_the_other_side_lacks():
    """ahead() keeps the slots the other side lacks or holds smaller."""
    mine = {"a": {"r1": (3, 0), "r2": (1, 1)}, "b": {"r1": (1, 0)}, "c": {"r1": (2, 2)}}
    theirs = {"a": {"r1": (3, 0), "r2": (1, 0)}, "c": {"r1": (5, 5)}}
    assert digest.ahead(mine, theirs) == {"a": {"r2": (1, 1)}, "b": {"r1": (1, 0)}}


# The wire formats.

digests = st.builds(
    Digest,
    sender=addresses,
    incarnation=tokens,
    cluster=tokens,
    digest=st.binary(min_size=SIZE, max_size=SIZE),
    members=st.lists(addresses, max_size=5).map(tuple),
)
replies = st.builds(
    DigestReply,
    sender=addresses,
    incarnation=tokens,
    cluster=tokens,
    buckets=st.lists(st.integers(0, digest.BUCKETS - 1), max_size=10).map(tuple),
    state=states,
    members=st.lists(addresses, max_size=5).map(tuple),
    keys=st.one_of(st.just(""), st.text("0123456789abcdef", min_size=32, max_size=32)),
    keys_before=st.one_of(st.none(), st.floats(0, 1e11)),
    recent=st.dictionaries(
        tokens,
        st.builds(
            Record,
            entries=st.dictionaries(
                tokens,
                st.builds(
                    Entry,
                    at=st.floats(0, 1e11),
                    digest=tokens,
                    writes=st.lists(st.tuples(names, counts, counts), min_size=1, max_size=3).map(tuple),
                ),
                min_size=1,
                max_size=2,
            ),
            settled=st.just({}),
        ),
        max_size=3,
    ),
)


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()


@given(digests)
def test_digest_round_trip(msg):
    assert wire.decode_digest(dumps(wire.encode_digest(msg)), SIZE) == msg


@given(replies)
def test_digest_reply_round_trip(msg):
    assert wire.decode_digest_reply(dumps(wire.encode_digest_reply(msg)), digest.BUCKETS) == msg


@given(st.binary(max_size=3000))
def test_decode_digest_of_arbitrary_bytes(data):
    """Arbitrary bytes decode or raise MalformedMessage, nothing else."""
    for decode in (lambda d: wire.decode_digest(d, SIZE), lambda d: wire.decode_digest_reply(d, 256)):
        try:
            decode(data)
        except MalformedMessage:
            pass


GOOD_DIGEST = wire.encode_digest(Digest("10.0.0.2:8080", "inc", "dcounter", bytes(SIZE), ("10.0.0.3:8080",)))
GOOD_REPLY = wire.encode_digest_reply(
    DigestReply("10.0.0.2:8080", "inc", "dcounter", (1, 2), {"c": {"r": (1, 0)}}, ())
)


@given(st.sampled_from(sorted(GOOD_DIGEST)), json_values)
def test_digest_with_any_field_value(key, value):
    """A good digest with one field replaced by any JSON value raises only MalformedMessage."""
    try:
        wire.decode_digest(dumps({**GOOD_DIGEST, key: value}), SIZE)
    except MalformedMessage:
        pass


@given(st.sampled_from(sorted(GOOD_REPLY)), json_values)
def test_digest_reply_with_any_field_value(key, value):
    """A good reply with one field replaced by any JSON value raises only MalformedMessage."""
    try:
        wire.decode_digest_reply(dumps({**GOOD_REPLY, key: value}), digest.BUCKETS)
    except MalformedMessage:
        pass


def test_digest_of_the_wrong_size_is_refused():
    for body in (
        {**GOOD_DIGEST, "digest": "AAAA"},
        {**GOOD_DIGEST, "digest": "not base64!"},
        {**GOOD_REPLY, "buckets": [256]},
    ):
        try:
            if "buckets" in body:
                wire.decode_digest_reply(dumps(body), digest.BUCKETS)
            else:
                wire.decode_digest(dumps(body), SIZE)
        except MalformedMessage:
            continue
        raise AssertionError(f"{body!r} was accepted")


# Rounds.


def bodies(net: Network, path: str, to: str) -> list[Any]:
    return [s.body for s in net.requests("POST", path, to=to)]


def exchanged_bytes(node: Any) -> tuple[float, float]:
    """Anti-entropy bytes sent and received, as /metrics tells them."""
    registry = node.client.metrics.registry
    name = "dcounter_anti_entropy_bytes_total"
    return (
        registry.get_sample_value(name, {"direction": "sent"}) or 0.0,
        registry.get_sample_value(name, {"direction": "received"}) or 0.0,
    )


def test_idle_round_ships_no_state():
    """Two nodes holding the same 2,000 counters exchange digests and nothing else."""
    net = Network()
    a, b = net.add_many(2)
    state = {f"page.{i}": {"r1/x": (i + 1, i // 2)} for i in range(2000)}
    a.node.merge(state)
    b.node.merge(state)
    net.mesh()
    pushes_before = len(net.requests("POST", "/sync"))
    sent_before, received_before = exchanged_bytes(a)
    a.replicator.exchange(b.id)
    net.settle()
    sent, received = exchanged_bytes(a)
    sent, received = sent - sent_before, received - received_before
    assert len(net.requests("POST", "/sync")) == pushes_before
    assert sent + received < 4000, (sent, received)


def test_round_ships_only_what_differs():
    """A round carries the differing bucket one way and the lacking slots back."""
    net = Network()
    a, b = net.add_many(2)
    common = {f"c{i}": {"r1/x": (i + 1, 0)} for i in range(2000)}
    a.node.merge(common)
    b.node.merge(common)
    net.mesh()
    a.node.merge({"c5": {"r2/y": (7, 0)}})  # only a has this slot
    b.node.merge({"c9": {"r3/z": (1, 1)}})  # only b has this one
    digests, syncs = len(bodies(net, "/digest", b.id)), len(bodies(net, "/sync", b.id))
    a.replicator.exchange(b.id)
    net.settle()
    assert a.node.counters.state() == b.node.counters.state()
    (opened,) = bodies(net, "/digest", b.id)[digests:]
    assert "state" not in opened
    (pushed,) = bodies(net, "/sync", b.id)[syncs:]
    assert pushed["state"] == {"c5": {"r2/y": [7, 0]}}


def test_round_with_another_cluster_changes_nothing():
    """A digest from another cluster is a 403; neither side changes."""
    net = Network()
    a = net.add(9001)
    stranger = net.add(9002, cluster="other")
    stranger.increment(5)
    stranger.replicator.exchange(a.id)
    net.settle()
    assert a.count() == 0 and stranger.count() == 5
    assert a.membership.known() == []
    reply = net.call("POST", a.id, "/digest", json=bodies(net, "/digest", a.id)[0])
    assert reply.code == 403


def test_malformed_digest_is_400():
    net = Network()
    a = net.add(9001)
    a.increment(3)
    reply = net.call("POST", a.id, "/digest", json={**GOOD_DIGEST, "cluster": CLUSTER, "digest": "AAAA"})
    assert reply.code == 400
    assert set(reply.json) == {"error"}
    assert a.count() == 3


@pytest.mark.parametrize("query", ["nan", "inf", "-1", "1e12", "abc", "", "1&keys_before=2"])
def test_bad_keys_before_is_400(query):
    net = Network()
    a = net.add(9001)
    reply = net.call("POST", a.id, f"/digest?keys_before={query}", json={**GOOD_DIGEST, "cluster": CLUSTER})
    assert reply.code == 400
    assert "keys_before" in reply.json["error"]


class _BeforeDigests(Resource):
    """A node of the release before /digest: that path is a 404."""

    isLeaf = True

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def render(self, request: Any) -> Any:
        if request.path == b"/digest":
            request.setResponseCode(404)
            return b'{"error":"not found"}'
        return self.inner.render(request)


def test_older_peer_gets_whole_state_push_pull():
    """During a rolling upgrade, a peer without /digest gets the push-pull of whole state."""
    net = Network()
    a, b = net.add_many(2)
    b.resource = _BeforeDigests(b.resource)
    a.increment(4)
    b.increment(6, name="hits")
    net.mesh()
    a.replicator.exchange(b.id)
    net.settle()
    assert [body["reply"] for body in bodies(net, "/sync", b.id)].count(True) >= 1
    assert a.node.counters.values() == b.node.counters.values() == {"default": 4, "hits": 6}


def test_summary_follows_local_writes_and_merges():
    """The cached digest changes with a local write and with a merge, not otherwise."""
    net = Network()
    a = net.add(9001)
    first = a.replicator.summary()
    assert a.replicator.summary() is first
    a.increment()
    second = a.replicator.summary()
    assert second != first
    a.node.merge({"x": {"r/x": (1, 0)}})  # as a peer's state is merged
    assert a.replicator.summary() != second
    assert a.replicator.summary() == digest.summarize(a.node.outgoing())


KEY = "cluster-key-0123456789"


def test_keyed_rounds_are_signed_and_unsigned_digests_refused():
    """With a cluster key, rounds run signed; a digest without a MAC is a 401 and changes nothing."""
    net = Network()
    a, b = net.add(9001, keys=[KEY]), net.add(9002, keys=[KEY])
    net.mesh()
    b.node.merge({"x": {"r/x": (3, 0)}})
    a.replicator.exchange(b.id)
    net.settle()
    assert a.node.counters.values() == {"x": 3}
    assert b.api.guard.accepted["http"] > 0
    opened = bodies(net, "/digest", b.id)[-1]
    reply = net.call("POST", b.id, "/digest", json=opened)  # the same body, unsigned
    assert reply.code == 401
    assert set(reply.json) == {"error"}


def test_digest_from_a_stranger_is_refused():
    """A node not admitted gets a 403 for its digest, and no state."""
    net = Network()
    a = net.add(9001)
    a.increment(4)
    stranger = {**GOOD_DIGEST, "from": "127.0.0.1:9009", "cluster": CLUSTER}
    reply = net.call("POST", a.id, "/digest", json=stranger)
    assert reply.code == 403
    assert "state" not in reply.json


def keyed_write(net: Network, to: str, key: str) -> Any:
    return net.call("POST", to, "/increment", json={"by": 3}, headers={"Idempotency-Key": [key]})


def test_round_carries_keys_a_peer_missed():
    """
    B holds A's counters but missed the key they were counted under (a lost
    push): the digest round notices the keys differ and pushes and pulls
    them whole, so a retry on B is then a replay.
    """
    net = Network()
    a, b = net.add_many(2)
    net.mesh()
    net.cut(b.id)
    assert keyed_write(net, a.id, "k-1").code == 200
    net.heal(b.id)
    a.replicator._outbox.clear()  # the push is lost for good
    a.replicator._key_outbox.clear()
    b.node.merge(a.node.outgoing())  # the slots arrived by another way, not the key
    assert b.node.counters.keys.state() == {}
    syncs = len(bodies(net, "/sync", b.id))
    a.replicator.exchange(b.id)
    net.settle()
    assert "k-1" in b.node.counters.keys.state()
    assert len(bodies(net, "/sync", b.id)) > syncs
    retry = keyed_write(net, b.id, "k-1")
    assert (retry.code, retry.header("Idempotent-Replayed")) == (200, "true")
    assert a.count() == b.count() == 3


def whole_rounds(net: Network) -> int:
    """The whole-state push-pulls so far: syncs that ask for a reply."""
    return sum(1 for s in net.requests("POST", "/sync") if s.body and s.body.get("reply"))


def lost_keyed_write(net: Network, a: Any, b: Any, key: str) -> None:
    """A keyed write on A whose push to B is lost for good."""
    net.cut(b.id)
    assert keyed_write(net, a.id, key).code == 200
    net.heal(b.id)
    a.replicator._outbox.clear()
    a.replicator._key_outbox.clear()


def round_after_a_lost_keyed_write(
    on_b: bool = False, age: float = 0.0, wrap: Any = None
) -> tuple[Network, Any, Any]:
    """
    Two nodes; a keyed write on A (on B if C{on_b}) whose push is lost;
    C{age} seconds later, A's anti-entropy round with B (C{wrap}ped).
    """
    net = Network()
    net.clock.advance(1000)
    a, b = net.add_many(2)
    if wrap is not None:
        b.resource = wrap(b.resource)
    net.mesh()
    lost_keyed_write(net, *((b, a) if on_b else (a, b)), "k-1")
    net.clock.advance(age)
    a.replicator.exchange(b.id)
    net.settle()
    return net, a, b


def test_recent_key_a_peer_lacks_travels_with_its_slots():
    """
    A keyed write younger than RECENT_KEYS that B lacks (as a push still on
    its way, under a steady flow of keyed writes) leaves the round a digest
    round: the slot goes to B with its key, so a retry on B is a replay.
    """
    net, a, b = round_after_a_lost_keyed_write()
    assert whole_rounds(net) == 0
    assert "k-1" in b.node.counters.keys.state()
    retry = keyed_write(net, b.id, "k-1")
    assert (retry.code, retry.header("Idempotent-Replayed")) == (200, "true")
    assert a.count() == b.count() == 3


def test_recent_key_of_the_answering_side_comes_with_its_slots():
    """The same the other way: B's answer carries its slot and the recent key it counts."""
    net, a, b = round_after_a_lost_keyed_write(on_b=True)
    assert whole_rounds(net) == 0
    assert "k-1" in a.node.counters.keys.state()
    assert a.count() == b.count() == 3


def test_older_key_a_peer_lacks_makes_the_round_whole():
    """A keyed write older than RECENT_KEYS that B lacks was lost: the round is the whole push-pull."""
    net, a, b = round_after_a_lost_keyed_write(age=Replicator.RECENT_KEYS + 1)
    assert whole_rounds(net) == 1
    assert "k-1" in b.node.counters.keys.state()
    assert a.count() == b.count() == 3


class _KeysBeforeChanged(Resource):
    """
    A peer reached with another C{keys_before} than asked (the query is not
    under the MAC), or one of the release before it (which ignores it).
    """

    isLeaf = True

    def __init__(self, inner: Any, value: bytes | None) -> None:
        super().__init__()
        self.inner, self.value = inner, value

    def render(self, request: Any) -> Any:
        if self.value is None:
            request.args.pop(b"keys_before", None)
        else:
            request.args[b"keys_before"] = [self.value]
        return self.inner.render(request)


@pytest.mark.parametrize("value", [None, b"1.5"])
def test_answer_not_for_our_keys_before_compares_every_key(value):
    """
    An answer without our C{keys_before} (an older peer) or with another is
    judged on the digest of all keys: a recent key one side lacks makes the
    round whole, and nothing of the answer is merged before.
    """
    net, a, b = round_after_a_lost_keyed_write(wrap=lambda inner: _KeysBeforeChanged(inner, value))
    assert whole_rounds(net) == 1
    assert "k-1" in b.node.counters.keys.state()
    assert a.count() == b.count() == 3


def test_round_with_the_same_keys_ships_no_state():
    """Nodes holding the same keys exchange digests only, keys included."""
    net = Network()
    a, b = net.add_many(2)
    net.mesh()
    for i in range(20):
        assert keyed_write(net, a.id, f"k-{i}").code == 200
    net.settle()
    assert a.replicator.keys_summary() == b.replicator.keys_summary() != ""
    syncs = len(net.requests("POST", "/sync"))
    a.replicator.exchange(b.id)
    b.replicator.exchange(a.id)
    net.settle()
    assert len(net.requests("POST", "/sync")) == syncs
