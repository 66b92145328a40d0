"""
Idempotency-Key on the HTTP writes, through StubTreq against in-memory
nodes: replays answer as the first write did and change nothing, on the
node that took the write or on any other.
"""

from __future__ import annotations

import pytest

from dcounter.counter import MAX_VALUE
from tests.support import Network, Reply, TestNode


@pytest.fixture
def net() -> Network:
    return Network()


def write(
    net: Network, node: TestNode, key: str | None, path: str = "/increment", body: object = None
) -> Reply:
    headers = {} if key is None else {"Idempotency-Key": [key]}
    if body is None:
        return net.call("POST", node.id, path, headers=headers)
    return net.call("POST", node.id, path, json=body, headers=headers)


def test_same_key_ten_times_counts_once(net: Network) -> None:
    """A keyed write sent 10 times counts once; every retry answers as the first did."""
    a = net.add(9001)
    a.increment(4)
    first = write(net, a, "order-17", body={"by": 3})
    assert (first.code, first.json["count"], first.header("Idempotent-Replayed")) == (200, 7, None)
    a.increment(1)
    for _ in range(9):
        again = write(net, a, "order-17", body={"by": 3})
        assert again.code == 200
        assert again.json["count"] == 7  # the first answer's count, not today's
        assert again.header("Idempotent-Replayed") == "true"
    assert a.count() == 8


def test_named_counters_and_quoted_keys(net: Network) -> None:
    """Named increments and decrements take keys too; a structured-field string key is unquoted."""
    a = net.add(9001)
    assert write(net, a, '"d-1"', "/counters/x/decrement", {"by": 2}).json["count"] == -2
    replay = write(net, a, "d-1", "/counters/x/decrement", {"by": 2})
    assert (replay.json, replay.header("Idempotent-Replayed")) == (
        {"name": "x", "count": -2, "node_id": a.id},
        "true",
    )
    assert write(net, a, "i-1", "/counters/x/increment").json["count"] == -1
    assert write(net, a, "i-1", "/counters/x/increment").json["count"] == -1
    assert a.count("x") == -1


@pytest.mark.parametrize(
    ("path", "body"),
    [("/increment", {"by": 2}), ("/counters/default/decrement", None), ("/counters/other/increment", None)],
)
def test_same_key_other_request_is_422(net: Network, path: str, body: object) -> None:
    """A key reused for a different write is refused (422) and changes nothing."""
    a = net.add(9001)
    write(net, a, "k", "/increment")
    reply = write(net, a, "k", path, body)
    assert reply.code == 422
    assert "different request" in reply.json["error"]
    assert a.node.counters.values() == {"default": 1}


@pytest.mark.parametrize("key", ["", "x" * 129, "caf\xe9", "tab\there", '""'])
def test_bad_keys_are_400(net: Network, key: str) -> None:
    """Keys must be 1 to 128 printable ASCII characters; anything else is a 400 that changes nothing."""
    a = net.add(9001)
    reply = net.call("POST", a.id, "/increment", headers={"Idempotency-Key": [key.encode("latin-1")]})
    assert reply.code == 400
    assert "Idempotency-Key" in reply.json["error"]
    assert a.count() == 0


def test_longest_key_accepted(net: Network) -> None:
    a = net.add(9001)
    assert write(net, a, "~" * 128).code == 200
    assert write(net, a, "~" * 128).header("Idempotent-Replayed") == "true"
    assert a.count() == 1


def test_retry_on_another_node_after_replication_is_a_replay(net: Network) -> None:
    """Once A's keyed write reached B, the same key on B is a replay there."""
    a, b = net.add(9001), net.add(9002)
    net.mesh()
    assert write(net, a, "k", body={"by": 5}).json["count"] == 5
    reply = write(net, b, "k", body={"by": 5})
    assert (reply.json["count"], reply.header("Idempotent-Replayed")) == (5, "true")
    assert (a.count(), b.count()) == (5, 5)


@pytest.mark.parametrize("first", [9001, 9002])
@pytest.mark.parametrize("start", [0.0, 1000.0])
def test_key_counted_on_both_sides_of_a_cut_counts_once_after_healing(
    net: Network, first: int, start: float
) -> None:
    """
    A accepts a keyed write it cannot replicate; the client retries on B,
    which counts it too.  Once they meet, both read it once, and the loser
    (the higher replica id) takes its copy back in its own slot, once.
    From a clock at 0 the keys are older than the rounds' C{keys_before}
    (whole-state rounds); from 1000, younger (slots with their keys).
    """
    net.clock.advance(start)
    a, b = net.add(9001), net.add(9002)
    net.mesh()
    one, other = (a, b) if first == 9001 else (b, a)
    net.cut(other.id)  # one's push to other fails
    write(net, one, "k", body={"by": 3})
    net.heal(other.id)
    net.cut(one.id)  # and other's push to one
    write(net, other, "k", body={"by": 3})
    assert (a.count(), b.count()) == (3, 3)
    net.heal(one.id)
    a.replicator.exchange(b.id)
    net.settle()
    assert (a.count(), b.count()) == (3, 3)
    b.replicator.exchange(a.id)
    net.settle()
    loser = max((a, b), key=lambda n: n.node.replica)
    for node in (a, b):
        assert node.count() == 3
        assert node.node.counters.slot("default", loser.node.replica) == (3, 3)
        assert node.node.counters.keys.unsettled(node.node.replica) == []
    # Settled, the key can be forgotten without the value moving.
    net.clock.advance(86400 + 1)
    for node in (a, b):
        assert node.node.expire_keys() == ["k"]
        assert node.count() == 3


def test_batch_with_key_counts_once(net: Network) -> None:
    """A keyed batch retried answers as the first did, changing nothing, here or on a peer."""
    a, b = net.add(9001), net.add(9002)
    net.mesh()
    batch = {"page.a": 3, "page.b": -1, "default": 2}
    first = write(net, a, "batch-1", "/counters", batch)
    assert (first.code, first.header("Idempotent-Replayed")) == (200, None)
    assert first.json == {"counters": {"default": 2, "page.a": 3, "page.b": -1}, "node_id": a.id}
    a.increment(1)
    for node in (a, b, a):
        again = write(net, node, "batch-1", "/counters", dict(reversed(batch.items())))
        assert (again.code, again.header("Idempotent-Replayed")) == (200, "true")
        assert again.json["counters"] == {"default": 2, "page.a": 3, "page.b": -1}
    for node in (a, b):
        assert node.node.counters.values() == {"default": 3, "page.a": 3, "page.b": -1}


@pytest.mark.parametrize("body", [{"page.a": 3}, {"page.a": 3, "page.b": 1}, {"page.a": 3, "page.b": -2}])
def test_batch_key_with_other_body_is_422(net: Network, body: dict[str, int]) -> None:
    """The same key with a different batch is refused (422) and changes nothing."""
    a = net.add(9001)
    assert write(net, a, "batch-2", "/counters", {"page.a": 3, "page.b": -1}).code == 200
    reply = write(net, a, "batch-2", "/counters", body)
    assert reply.code == 422
    assert "different request" in reply.json["error"]
    assert write(net, a, "batch-2", "/increment").code == 422
    assert a.node.counters.values() == {"page.a": 3, "page.b": -1}


def test_keyed_batch_refused_whole_changes_nothing(net: Network) -> None:
    """A keyed batch one of whose amounts cannot count changes nothing, and its key is not remembered."""
    a = net.add(9001)
    a.node.counters.add("x", "another-replica", MAX_VALUE)
    reply = write(net, a, "batch-3", "/counters", {"y": 1, "x": 1})
    assert reply.code == 409
    assert a.node.counters.values() == {"x": MAX_VALUE}
    assert write(net, a, "batch-3", "/counters", {"y": 1}).code == 200
    assert a.node.counters.values() == {"x": MAX_VALUE, "y": 1}
