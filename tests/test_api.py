"""
The HTTP API, every endpoint driven through StubTreq against the real Klein
resource of an in-memory node.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock, StringTransport

from dcounter import wire
from dcounter.api import CounterSite
from dcounter.counter import MAX_SLOT
from dcounter.discovery import Discovery
from dcounter.membership import Membership, PeerState
from dcounter.store import StoreError
from dcounter.tap import StopAnswering
from tests.support import CLUSTER, Network, Reply, TestNode, address, break_store, result_of

A = address(9001)
B = address(9002)


@pytest.fixture
def net() -> Network:
    return Network()


@pytest.fixture
def a(net: Network) -> TestNode:
    return net.add(9001)


@pytest.fixture
def b(net: Network) -> TestNode:
    return net.add(9002)


def get(net: Network, path: str, to: str = A) -> Reply:
    return net.call("GET", to, path)


def post(net: Network, path: str, body: object = None, *, data: bytes | None = None, to: str = A) -> Reply:
    if data is not None:
        return net.call("POST", to, path, data=data)
    if body is not None:
        return net.call("POST", to, path, json=body)
    return net.call("POST", to, path)


def assert_json(reply: Reply) -> None:
    assert reply.header("Content-Type") == "application/json"


def assert_error(reply: Reply, code: int) -> None:
    assert reply.code == code, reply
    assert_json(reply)
    assert set(reply.json) == {"error"}
    assert isinstance(reply.json["error"], str) and reply.json["error"]


# The original's endpoints.


def test_health(net: Network, a: TestNode) -> None:
    """GET /health says who the node is, in the original's shape and more."""
    net.clock.advance(5)
    reply = get(net, "/health")
    assert reply.code == 200
    assert_json(reply)
    assert reply.json["status"] == "ok"
    assert reply.json["node_id"] == A
    assert reply.json["incarnation"] == a.node.identity.incarnation
    assert reply.json["cluster"] == CLUSTER
    assert reply.json["uptime"] == 5.0
    assert reply.json["peers"] == {"alive": 0, "suspect": 0, "dead": 0}


def test_health_decodes_as_hello(net: Network, a: TestNode) -> None:
    """What /health says is what peers decode to admit a node."""
    d = net.stub.get(f"http://{A}/health")
    net.settle()
    hello = wire.decode_hello(result_of(result_of(d).content()))
    assert (hello.node_id, hello.incarnation, hello.cluster) == (A, a.node.identity.incarnation, CLUSTER)


def test_count_starts_at_zero(net: Network, a: TestNode) -> None:
    """GET /count of a new node is 0, with its node id."""
    reply = get(net, "/count")
    assert reply.code == 200
    assert_json(reply)
    assert reply.json == {"count": 0, "node_id": A}


def test_increment_empty_body(net: Network, a: TestNode) -> None:
    """POST /increment with no body adds 1 and returns the new count."""
    assert post(net, "/increment").json == {"count": 1, "node_id": A}
    reply = post(net, "/increment")
    assert reply.code == 200
    assert_json(reply)
    assert reply.json == {"count": 2, "node_id": A}
    assert get(net, "/count").json["count"] == 2


def test_increment_by(net: Network, a: TestNode) -> None:
    """POST /increment {"by": n} adds n."""
    assert post(net, "/increment", {"by": 5}).json["count"] == 5
    assert post(net, "/increment", {}).json["count"] == 6
    assert get(net, "/count").json["count"] == 6


def test_legacy_sync_raises(net: Network, a: TestNode) -> None:
    """The original's /sync {"count": N} raises the count to N."""
    post(net, "/increment", {"by": 3})
    reply = post(net, "/sync", {"count": 10})
    assert reply.code == 200
    assert_json(reply)
    assert reply.json == {"count": 10, "node_id": A}
    assert get(net, "/count").json["count"] == 10


def test_legacy_sync_never_lowers(net: Network, a: TestNode) -> None:
    """/sync {"count": N} below the count changes nothing."""
    post(net, "/increment", {"by": 7})
    reply = post(net, "/sync", {"count": 2})
    assert reply.code == 200
    assert reply.json["count"] == 7
    assert get(net, "/count").json["count"] == 7
    assert a.node.counters.state() == {"default": {a.node.replica: (7, 0)}}


@pytest.mark.parametrize("body", [{"count": -1}, {"count": "5"}, {"count": True}, {"count": 5, "x": 1}])
def test_legacy_sync_bad(net: Network, a: TestNode, body: object) -> None:
    """A bad legacy /sync is a 400 and changes nothing."""
    post(net, "/increment")
    assert_error(post(net, "/sync", body), 400)
    assert get(net, "/count").json["count"] == 1


def test_peers_lists_live_peers(net: Network, a: TestNode) -> None:
    """GET /peers is a JSON array of the peers believed alive, not dead ones."""
    assert get(net, "/peers").json == []
    now = net.clock.seconds()
    for peer in ("127.0.0.1:9005", "127.0.0.1:9003", "127.0.0.1:9004"):
        a.membership.heard_from(peer, now)
    a.membership.mark("127.0.0.1:9004", PeerState.SUSPECT, now)  # still listed
    a.membership.mark("127.0.0.1:9005", PeerState.DEAD, now)  # not listed
    reply = get(net, "/peers")
    assert reply.code == 200
    assert_json(reply)
    assert reply.json == ["127.0.0.1:9003", "127.0.0.1:9004"]


def test_register_admits_a_node_answering_as_itself(net: Network, a: TestNode, b: TestNode) -> None:
    """POST /register of a dcounter node that answers as itself makes it a peer."""
    reply = post(net, "/register", {"id": B})
    assert reply.code == 200
    assert_json(reply)
    assert reply.json == {"status": "registered", "id": B}
    assert get(net, "/peers").json == [B]
    assert net.requests("GET", "/health", to=B)


def test_register_refuses_a_node_that_does_not_answer(net: Network, a: TestNode, b: TestNode) -> None:
    """/register of an address where nothing answers is a 502; no peer added."""
    net.cut(B)
    assert_error(post(net, "/register", {"id": B}), 502)
    assert_error(post(net, "/register", {"id": "127.0.0.1:9999"}), 502)
    assert get(net, "/peers").json == []


def test_register_refuses_a_node_answering_as_another(net: Network, a: TestNode, b: TestNode) -> None:
    """/register of an address whose node says it is someone else is a 502."""
    net.alias("127.0.0.1:9500", b)
    reply = post(net, "/register", {"id": "127.0.0.1:9500"})
    assert_error(reply, 502)
    assert B not in reply.json["error"]  # what a remote host answered is never repeated
    assert get(net, "/peers").json == []
    assert B not in a.membership


def test_register_refuses_another_cluster(net: Network, a: TestNode) -> None:
    """/register of a node of another cluster is a 502."""
    net.add(9003, cluster="other")
    assert_error(post(net, "/register", {"id": address(9003)}), 502)
    assert get(net, "/peers").json == []


def test_register_refuses_itself(net: Network, a: TestNode) -> None:
    """/register of the node's own id is a 400, without a probe; it never becomes its own peer."""
    probes = len(net.requests("GET", "/health", to=A))
    assert_error(post(net, "/register", {"id": A}), 400)
    assert len(net.requests("GET", "/health", to=A)) == probes
    assert get(net, "/peers").json == []


@pytest.mark.parametrize(
    "body",
    [
        {"id": "nohost"},
        {"id": "127.0.0.1:0"},
        {"id": "127.0.0.1:65536"},
        {"id": "bad host:80"},
        {"id": 9002},
        {},
        {"id": B, "extra": 1},
        [B],
    ],
)
def test_register_bad_id(net: Network, a: TestNode, body: object) -> None:
    """/register with a bad id is a 400, and nothing is probed."""
    assert_error(post(net, "/register", body), 400)
    assert net.requests(path="/health") == []
    assert get(net, "/peers").json == []


def test_remove_peer(net: Network, a: TestNode, b: TestNode) -> None:
    """/remove-peer forgets a peer and quarantines it."""
    post(net, "/register", {"id": B})
    reply = post(net, "/remove-peer", {"id": B})
    assert reply.code == 200
    assert_json(reply)
    assert reply.json == {"status": "removed", "id": B, "quarantined_for": a.membership.quarantine}
    assert get(net, "/peers").json == []
    assert B not in a.membership
    assert a.membership.is_quarantined(B, net.clock.seconds())


def test_removed_peer_is_not_readmitted_by_gossip(net: Network, a: TestNode, b: TestNode) -> None:
    """While quarantined, a removed peer's own sync does not bring it back."""
    post(net, "/register", {"id": B})
    post(net, "/remove-peer", {"id": B})
    b.membership.heard_from(A, net.clock.seconds())
    net.settle()  # b's anti-entropy round with a reaches a, naming b
    assert net.requests("POST", "/digest", to=A)
    assert B not in a.membership
    assert get(net, "/peers").json == []


def test_register_overrides_quarantine(net: Network, a: TestNode, b: TestNode) -> None:
    """An explicit /register brings back a removed peer at once."""
    post(net, "/register", {"id": B})
    post(net, "/remove-peer", {"id": B})
    assert post(net, "/register", {"id": B}).code == 200
    assert get(net, "/peers").json == [B]


def test_remove_unknown_peer(net: Network, a: TestNode) -> None:
    """/remove-peer of a node that is not a peer is a 404."""
    assert_error(post(net, "/remove-peer", {"id": B}), 404)


def test_remove_peer_bad_id(net: Network, a: TestNode) -> None:
    """/remove-peer with a bad id is a 400."""
    assert_error(post(net, "/remove-peer", {"id": "x"}), 400)
    assert_error(post(net, "/remove-peer", {}), 400)


def test_discovery_disabled(net: Network, a: TestNode) -> None:
    """GET /discovery without discovery: the original's fields, enabled false."""
    reply = get(net, "/discovery")
    assert reply.code == 200
    assert_json(reply)
    assert reply.json["node_id"] == A
    assert reply.json["peers"] == []
    assert reply.json["cluster"] == CLUSTER
    assert reply.json["enabled"] is False


def test_discovery_enabled(net: Network) -> None:
    """GET /discovery with discovery adds its settings and counters."""
    discovery = Discovery(
        wire.Announcement(CLUSTER, A, A, "inc"),
        membership=Membership(A),
        consider=lambda _: None,
        reactor=net.clock,
        port=7123,
        broadcasts=["10.0.0.255"],
        interval=3.0,
    )
    net.add(9001, discovery=discovery)
    reply = get(net, "/discovery")
    assert reply.json["enabled"] is True
    assert reply.json["node_id"] == A
    assert reply.json["discovery_port"] == 7123
    assert reply.json["broadcast"] == ["10.0.0.255"]
    assert reply.json["announce_interval"] == 3.0
    assert reply.json["datagrams"]["received"] == 0


def test_members(net: Network, a: TestNode) -> None:
    """GET /members lists every peer with its state, dead ones included."""
    now = net.clock.seconds()
    a.membership.heard_from("127.0.0.1:9003", now, "i3")
    a.membership.heard_from("127.0.0.1:9004", now)
    a.membership.failed("127.0.0.1:9004", now)
    a.membership.failed("127.0.0.1:9004", now)
    a.membership.mark("127.0.0.1:9004", PeerState.DEAD, now)
    reply = get(net, "/members")
    assert reply.code == 200
    assert_json(reply)
    assert reply.json["node_id"] == A
    assert reply.json["incarnation"] == a.node.identity.incarnation
    states = {m["id"]: (m["state"], m["incarnation"]) for m in reply.json["members"]}
    assert states == {"127.0.0.1:9003": ("alive", "i3"), "127.0.0.1:9004": ("dead", None)}


# Named counters.


def test_counters(net: Network, a: TestNode) -> None:
    """GET /counters maps every counter to its value."""
    assert get(net, "/counters").json == {"counters": {}, "node_id": A}
    post(net, "/increment")
    post(net, "/counters/hits/increment", {"by": 4})
    reply = get(net, "/counters")
    assert reply.code == 200
    assert_json(reply)
    assert reply.json["counters"] == {"default": 1, "hits": 4}


def test_named_counter_increment_and_decrement(net: Network, a: TestNode) -> None:
    """Named counters go up and down, by 1 or by n."""
    assert post(net, "/counters/hits/increment").json == {"name": "hits", "count": 1, "node_id": A}
    assert post(net, "/counters/hits/increment", {"by": 10}).json["count"] == 11
    reply = post(net, "/counters/hits/decrement", {"by": 4})
    assert reply.code == 200
    assert_json(reply)
    assert reply.json["count"] == 7
    assert post(net, "/counters/hits/decrement").json["count"] == 6
    assert post(net, "/counters/gone/decrement").json["count"] == -1
    reply = get(net, "/counters/hits")
    assert reply.code == 200
    assert_json(reply)
    assert reply.json == {"name": "hits", "count": 6, "node_id": A}
    assert get(net, "/count").json["count"] == 0


def test_default_counter_is_the_original_counter(net: Network, a: TestNode) -> None:
    """/counters/default is what /count and /increment serve."""
    post(net, "/increment", {"by": 3})
    post(net, "/counters/default/decrement")
    assert get(net, "/count").json["count"] == 2
    assert get(net, "/counters/default").json["count"] == 2


# Batched writes.


def test_batch_applies_every_amount(net: Network, a: TestNode) -> None:
    """POST /counters adds and subtracts on many counters, and answers their values."""
    post(net, "/counters/page.a/increment", {"by": 10})
    reply = post(net, "/counters", {"page.a": 3, "page.b": -1, "default": 2})
    assert reply.code == 200
    assert_json(reply)
    assert reply.json == {"counters": {"page.a": 13, "page.b": -1, "default": 2}, "node_id": A}
    assert get(net, "/counters").json["counters"] == {"page.a": 13, "page.b": -1, "default": 2}
    assert get(net, "/count").json["count"] == 2


def test_batch_is_one_durable_commit(net: Network, a: TestNode) -> None:
    """A batch reaches the store as one save, holding every slot it changed."""
    saves: list[dict[str, dict[str, tuple[int, int]]]] = []
    save = a.store.save

    def recording(state: dict[str, dict[str, tuple[int, int]]]) -> object:
        saves.append(state)
        return save(state)

    a.store.save = recording  # type: ignore[method-assign,assignment]
    names = {f"c{i}": i + 1 for i in range(500)}
    assert post(net, "/counters", names).code == 200
    assert len(saves) == 1
    assert saves[0] == {name: {a.node.replica: (n, 0)} for name, n in names.items()}


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b"[]",
        b"not json",
        b'{"ok": 1, "_bad": 1}',
        b'{"ok": 1, "x": 0}',
        b'{"ok": 1, "x": 1.5}',
        b'{"ok": 1, "x": true}',
        b'{"ok": 1, "x": "1"}',
        b'{"ok": 1, "x": 9007199254740992}',
        b'{"ok": 1, "x": -9007199254740992}',
        b'{"ok": 1, "x": null}',
    ],
)
def test_bad_batch_is_400_and_changes_nothing(net: Network, a: TestNode, body: bytes) -> None:
    """A batch with any bad name or amount is refused whole."""
    assert_error(post(net, "/counters", data=body), 400)
    assert get(net, "/counters").json["counters"] == {}


def test_batch_overflow_is_409_and_changes_nothing(net: Network, a: TestNode) -> None:
    """A batch where one counter would pass 2^63-1 applies to none of them."""
    a.node.merge({"full": {a.node.replica: (MAX_SLOT - 1, 0)}})
    assert_error(post(net, "/counters", {"ok": 5, "full": 2}), 409)
    assert get(net, "/counters").json["counters"] == {"full": MAX_SLOT - 1}


def test_batch_body_over_the_limit_is_413(net: Network, a: TestNode) -> None:
    """A batch is bound by the same body limit as single writes."""
    data = b'{"x": 1}'.ljust(wire.MAX_BODY + 1)
    assert_error(post(net, "/counters", data=data), 413)
    assert get(net, "/counters").json["counters"] == {}


def test_batch_store_error_is_503(net: Network, a: TestNode) -> None:
    """A batch the store cannot commit is a 503, like a single write."""
    a.store.save = lambda state, **_: fail(StoreError("disk on fire"))  # type: ignore[method-assign]
    assert_error(post(net, "/counters", {"a": 1, "b": 2}), 503)


def test_batch_replicates_in_one_push(net: Network, a: TestNode, b: TestNode) -> None:
    """Every counter of a batch reaches a peer, in one push."""
    net.mesh()
    before = len(net.requests("POST", "/sync", to=B))
    post(net, "/counters", {"x": 2, "y": -3})
    net.settle()
    assert len(net.requests("POST", "/sync", to=B)) == before + 1
    assert b.node.counters.values() == {"x": 2, "y": -3}


def test_unknown_counter(net: Network, a: TestNode) -> None:
    """GET /counters/{name} of a counter never written is a 404."""
    assert_error(get(net, "/counters/nope"), 404)


@pytest.mark.parametrize("name", ["_x", "-x", "a%20b", "x" * 129, "caf%C3%A9"])
def test_bad_counter_name(net: Network, a: TestNode, name: str) -> None:
    """A bad counter name is a 400, on reads and writes, and creates nothing."""
    assert_error(get(net, f"/counters/{name}"), 400)
    assert_error(post(net, f"/counters/{name}/increment"), 400)
    assert_error(post(net, f"/counters/{name}/decrement"), 400)
    assert get(net, "/counters").json["counters"] == {}


# Errors.

BAD_AMOUNTS = [
    b"{",
    b"not json",
    b"\xff\xfe",
    b"[]",
    b'"by"',
    b"1",
    b'{"by": "1"}',
    b'{"by": 1.5}',
    b'{"by": null}',
    b'{"by": 0}',
    b'{"by": true}',
    b'{"by": false}',
    b'{"by": -1}',
    b'{"by": 9007199254740992}',
    b'{"by": 1, "extra": 2}',
    b'{"amount": 1}',
]


@pytest.mark.parametrize("data", BAD_AMOUNTS)
def test_bad_increment_changes_nothing(net: Network, a: TestNode, data: bytes) -> None:
    """A bad /increment body is a 400 JSON error, and the count stays."""
    post(net, "/increment", {"by": 2})
    assert_error(post(net, "/increment", data=data), 400)
    assert get(net, "/count").json["count"] == 2
    assert a.node.counters.state() == {"default": {a.node.replica: (2, 0)}}


@pytest.mark.parametrize("data", BAD_AMOUNTS)
@pytest.mark.parametrize("action", ["increment", "decrement"])
def test_bad_named_write_changes_nothing(net: Network, a: TestNode, data: bytes, action: str) -> None:
    """A bad body on a named counter is a 400 and changes nothing."""
    post(net, "/counters/hits/increment", {"by": 5})
    assert_error(post(net, f"/counters/hits/{action}", data=data), 400)
    assert get(net, "/counters").json["counters"] == {"hits": 5}


@pytest.mark.parametrize("path", ["/nope", "/index.html", "/count/extra", "/counters/hits/reset"])
def test_unknown_path(net: Network, a: TestNode, path: str) -> None:
    """An unknown path is a 404 JSON error."""
    assert_error(get(net, path), 404)
    assert_error(post(net, path), 404)


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("GET", "/increment", "POST"),
        ("PUT", "/increment", "POST"),
        ("POST", "/count", "GET"),
        ("DELETE", "/peers", "GET"),
        ("GET", "/sync", "POST"),
        ("GET", "/register", "POST"),
        ("GET", "/remove-peer", "POST"),
        ("POST", "/health", "GET"),
        ("GET", "/counters/x/increment", "POST"),
        ("POST", "/counters/x", "GET"),
    ],
)
def test_wrong_method(net: Network, a: TestNode, method: str, path: str, allowed: str) -> None:
    """A wrong method is a 405 JSON error with an Allow header; it changes nothing."""
    reply = net.call(method, A, path)
    assert_error(reply, 405)
    assert allowed in (reply.header("Allow") or "").split(", ")
    assert get(net, "/counters").json["counters"] == {}


@pytest.mark.parametrize("path", ["/increment", "/register", "/remove-peer", "/counters/x/increment"])
def test_body_too_large(net: Network, a: TestNode, path: str) -> None:
    """A body over the limit is a 413 JSON error, and changes nothing."""
    data = b'{"by": 1, "pad": "' + b"x" * wire.MAX_BODY + b'"}'
    assert_error(post(net, path, data=data), 413)
    assert get(net, "/counters").json["counters"] == {}


def test_body_at_the_limit_is_read(net: Network, a: TestNode) -> None:
    """A body of exactly the limit is read (and judged on its content)."""
    data = b'{"by": 3}'.ljust(wire.MAX_BODY)
    reply = post(net, "/increment", data=data)
    assert reply.code == 200
    assert reply.json["count"] == 3


def test_overflow_is_a_conflict(net: Network, a: TestNode) -> None:
    """An increment past the largest slot is a 409 and changes nothing."""
    a.node.merge({"default": {a.node.replica: (MAX_SLOT - 1, 0)}})
    assert_error(post(net, "/increment", {"by": 2}), 409)
    assert get(net, "/count").json["count"] == MAX_SLOT - 1


def test_store_error_is_503(net: Network, a: TestNode) -> None:
    """A write the store cannot make durable is a 503 JSON error."""
    break_store(a.store, StoreError("disk on fire"))
    reply = post(net, "/increment")
    assert_error(reply, 503)
    assert "disk on fire" in reply.json["error"]


def test_no_traceback_on_internal_error(net: Network, a: TestNode) -> None:
    """An unexpected error is a 500 with a generic JSON error, no traceback."""

    def broken(name: str) -> int:
        raise RuntimeError("secret detail")

    a.node.value = broken  # type: ignore[method-assign]
    reply = get(net, "/count")
    assert reply.code == 500
    assert_json(reply)
    assert reply.json == {"error": "internal error"}


def test_peer_sync_from_another_cluster_is_403(net: Network, a: TestNode) -> None:
    """A peer sync for another cluster is a 403 and merges nothing."""
    sync = wire.Sync(B, "inc", "other", {"default": {f"{B}/inc": (50, 0)}}, members=(B,))
    assert_error(post(net, "/sync", wire.encode_sync(sync)), 403)
    assert get(net, "/count").json["count"] == 0
    assert net.requests(path="/health") == []


def test_peer_sync_merges(net: Network, a: TestNode) -> None:
    """A member's sync merges its state; with reply, answers with ours."""
    a.membership.heard_from(B, net.clock.seconds())
    post(net, "/increment", {"by": 2})
    sync = wire.Sync(B, "inc", CLUSTER, {"default": {f"{B}/inc": (5, 1)}}, reply=True)
    reply = post(net, "/sync", wire.encode_sync(sync))
    assert reply.code == 200
    assert_json(reply)
    theirs = wire.sync_from_json(reply.json)
    assert theirs.sender == A
    assert theirs.state == {"default": {f"{B}/inc": (5, 1), a.node.replica: (2, 0)}}
    assert get(net, "/count").json["count"] == 6


def test_peer_sync_without_reply(net: Network, a: TestNode) -> None:
    """A push (no reply asked) is answered {"ok": true}."""
    a.membership.heard_from(B, net.clock.seconds())
    sync = wire.Sync(B, "inc", CLUSTER, {"hits": {f"{B}/inc": (3, 0)}})
    reply = post(net, "/sync", wire.encode_sync(sync))
    assert reply.json == {"ok": True}
    assert get(net, "/counters/hits").json["count"] == 3


def test_peer_sync_is_answered_once_durable(net: Network, a: TestNode) -> None:
    """
    A push is answered only once what it brought is durable here (so the
    sender may count this node as holding its write), and a store that
    cannot commit makes it a 503, which the sender takes as not delivered.
    """
    commits: list[Deferred[None]] = []

    def pending(state: object, **_: object) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        commits.append(d)
        return d

    a.membership.heard_from(B, net.clock.seconds())
    a.store.save = pending  # type: ignore[method-assign]
    sync = wire.Sync(B, "inc", CLUSTER, {"hits": {f"{B}/inc": (3, 0)}})
    d = net.request("POST", f"http://{A}/sync", json=wire.encode_sync(sync))
    answered: list[object] = []
    d.addCallback(lambda response: answered.append(response) or response)
    net.settle()
    assert answered == []
    for commit in commits:
        commit.callback(None)
    net.settle()
    assert answered
    assert answer(net, d).json == {"ok": True}
    a.store.save = lambda state, **_: fail(StoreError("disk full"))  # type: ignore[method-assign]
    assert_error(post(net, "/sync", wire.encode_sync(sync)), 503)


@pytest.mark.parametrize(
    "body",
    [
        {"from": B, "incarnation": "i", "cluster": CLUSTER},
        {"from": B, "incarnation": "i", "cluster": CLUSTER, "state": {"default": {"r": [-1, 0]}}},
        {"from": B, "incarnation": "i", "cluster": CLUSTER, "state": {"default": {"r": [1]}}},
        {"from": "nohost", "incarnation": "i", "cluster": CLUSTER, "state": {}},
        {"from": B, "incarnation": "i", "cluster": CLUSTER, "state": {}, "reply": "yes"},
        {"from": B, "incarnation": "i", "cluster": CLUSTER, "state": {}, "evil": 1},
    ],
)
def test_bad_peer_sync(net: Network, a: TestNode, body: object) -> None:
    """A malformed peer sync is a 400 and merges nothing."""
    assert_error(post(net, "/sync", body), 400)
    assert a.node.counters.state() == {}


def test_content_type_everywhere(net: Network, a: TestNode, b: TestNode) -> None:
    """Every endpoint answers application/json, successes and errors alike."""
    replies = [
        get(net, "/health"),
        get(net, "/count"),
        post(net, "/increment"),
        post(net, "/sync", {"count": 3}),
        get(net, "/peers"),
        post(net, "/register", {"id": B}),
        post(net, "/remove-peer", {"id": B}),
        get(net, "/discovery"),
        get(net, "/members"),
        get(net, "/counters"),
        get(net, "/counters/default"),
        post(net, "/counters/x/increment"),
        post(net, "/counters/x/decrement"),
        get(net, "/nope"),
        get(net, "/increment"),
    ]
    assert [r.header("Content-Type") for r in replies] == ["application/json"] * len(replies)
    assert [r.code for r in replies] == [200] * 13 + [404, 405]


def test_removed_peer_state(net: Network, a: TestNode, b: TestNode) -> None:
    """A registered peer is alive in /members; removal drops it from there too."""
    post(net, "/register", {"id": B})
    members = get(net, "/members").json["members"]
    assert [(m["id"], m["state"]) for m in members] == [(B, PeerState.ALIVE.value)]
    post(net, "/remove-peer", {"id": B})
    assert get(net, "/members").json["members"] == []


# The daemon's own Site, in memory.


def serve(a: TestNode, data: bytes) -> tuple[bytes, bool]:
    """Feed raw bytes to a CounterSite connection; return what it wrote and whether it hung up."""
    site = CounterSite(a.api, reactor=MemoryReactorClock())
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    return transport.value(), transport.disconnecting


def test_site_serves_the_api(a: TestNode) -> None:
    """The daemon's Site serves the same API."""
    body = b'{"by": 4}'
    written, _ = serve(
        a, b"POST /increment HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert written.startswith(b"HTTP/1.1 200 ")
    assert b'{"count":4,"node_id":"127.0.0.1:9001"}' in written
    assert a.count() == 4


def test_site_asks_a_connection_for_its_addresses_once(a: TestNode) -> None:
    """
    Every request on a keep-alive connection sees the connection's addresses,
    asked of the transport once (a getsockname each, before) and kept.
    """
    asked: list[str] = []

    class Counting(StringTransport):
        def getHost(self) -> Any:
            asked.append("host")
            return super().getHost()

        def getPeer(self) -> Any:
            asked.append("peer")
            return super().getPeer()

    seen: list[tuple[Any, Any]] = []
    a.api.authorize = lambda request, path: seen.append((request.getHost(), request.getClientAddress()))  # type: ignore[method-assign]
    site = CounterSite(a.api, reactor=MemoryReactorClock())
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = Counting(hostAddress=IPv4Address("TCP", "10.0.0.1", 8080))
    peer = transport.getPeer()
    protocol.makeConnection(transport)
    asked.clear()
    protocol.dataReceived(b"POST /increment HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    assert transport.value().count(b"HTTP/1.1 200 ") == 3
    assert a.count() == 3
    assert seen == [(IPv4Address("TCP", "10.0.0.1", 8080), peer)] * 3
    assert sorted(asked) == ["host", "peer"]


def test_site_drops_a_connection_idle_for_a_minute(a: TestNode) -> None:
    """A kept-alive connection with nothing asked for 60 s is closed, on the Site's reactor."""
    reactor = MemoryReactorClock()
    site = CounterSite(a.api, reactor=reactor)
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /count HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    reactor.advance(59)
    assert not transport.disconnecting
    reactor.advance(1)
    assert transport.disconnecting


def test_a_stopping_node_answers_503_and_changes_nothing(a: TestNode) -> None:
    """
    From just before its HTTP port stops, a node answers every request on
    connections still open 503 (clients retry elsewhere), writes included.
    """
    service = StopAnswering(a.api)
    service.startService()
    service.stopService()
    for request in (
        b"POST /increment HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /counters/x/increment HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /count HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        written, _ = serve(a, request)
        assert written.startswith(b"HTTP/1.1 503 "), request
        assert b'{"error":"this node is stopping: ask another"}' in written
        assert b"Retry-After: 1" in written
    assert a.count() == 0 and a.count("x") == 0
    service.startService()
    written, _ = serve(a, b"POST /increment HTTP/1.1\r\nHost: x\r\n\r\n")
    assert written.startswith(b"HTTP/1.1 200 ")


def test_site_leaves_the_body_to_the_api_whatever_its_content_type(a: TestNode) -> None:
    """
    twisted.web does not parse form bodies here (the API takes JSON only,
    and parsing the Content-Type cost 6% of a peer's CPU per sync): a JSON
    body labelled as a form is the API's to read, not a bare 400.
    """
    body = b'{"by": 2}'
    written, _ = serve(
        a,
        b"POST /increment HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=z\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert written.startswith(b"HTTP/1.1 200 ")
    assert a.count() == 2


def test_site_refuses_huge_body_before_reading_it(a: TestNode) -> None:
    """A Content-Length over every limit is a 413 at once; the connection closes; nothing counts."""
    written, closed = serve(
        a, b"POST /increment HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (wire.MAX_SYNC_BODY + 1)
    )
    assert written.startswith(b"HTTP/1.1 413 ")
    assert b"Content-Type: application/json" in written
    assert b'"error"' in written
    assert closed
    assert a.count() == 0


def test_site_refuses_huge_chunked_body(a: TestNode) -> None:
    """A chunked body that grows past every limit is a 413 too."""
    chunk = b"x" * (1024 * 1024)
    head = b"POST /increment HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17))
    written, closed = serve(a, head + chunks)
    assert written.startswith(b"HTTP/1.1 413 ")
    assert closed
    assert a.count() == 0


# Write concern.


@pytest.fixture
def trio(net: Network) -> list[TestNode]:
    nodes = net.add_many(3)
    net.mesh()
    return nodes


def answer(net: Network, d: Any) -> Reply:
    response = result_of(d)
    body = result_of(response.content())
    return Reply(response.code, response.headers, json.loads(body))


@pytest.mark.parametrize("path", ["/increment", "/counters/hits/increment", "/counters/hits/decrement"])
def test_write_waits_for_peers(net: Network, trio: list[TestNode], path: str) -> None:
    """?wait=N and ?wait=all answer once that many peers hold the write, and say how many do."""
    a, b, c = trio
    for query, wanted in (("wait=1", 1), ("wait=2", 2), ("wait=all", 2), ("wait=0", 0)):
        reply = post(net, f"{path}?{query}")
        assert reply.code == 200, reply
        assert reply.json["replicated"] >= wanted
        assert reply.json["wait"] == wanted
    name = "hits" if "hits" in path else "default"
    assert b.count(name) == c.count(name) == a.count(name)


def test_write_concern_timeout_is_202_and_still_counts(net: Network, trio: list[TestNode]) -> None:
    """
    A write that fewer peers than asked hold within --wait-timeout answers
    202 (accepted) with the count and how many peers hold it; it counts.
    """
    a, b, c = trio
    net.cut(c.id)
    d = net.request("POST", f"http://{a.id}/increment?wait=2")
    answered: list[object] = []
    d.addCallback(lambda response: answered.append(response) or response)
    net.settle()
    assert answered == []
    net.advance(a.api.wait_timeout)
    reply = answer(net, d)
    assert reply.code == 202
    assert_json(reply)
    assert reply.json == {"count": 1, "node_id": a.id, "replicated": 1, "wait": 2}
    assert a.count() == b.count() == 1


@pytest.mark.parametrize("query", ["wait=-1", "wait=x", "wait=1001", "wait=1&wait=2", "wait=", "wait=١"])
def test_bad_write_concern_changes_nothing(net: Network, a: TestNode, query: str) -> None:
    """A bad ?wait is a 400, and the write is not made."""
    assert_error(post(net, f"/increment?{query}"), 400)
    assert_error(post(net, f"/counters/hits/increment?{query}"), 400)
    assert get(net, "/count").json["count"] == 0
    assert "hits" not in a.node.counters


# Bad requests found by a review (each was a 500, a hang or a wrong answer).


@pytest.mark.parametrize(
    "request_line, status",
    [
        (b"GET /health HTTP/1.1\r\nHost: a..b", b"400"),  # werkzeug's URL map refuses this Host
        (b"GET /counters HTTP/1.1\r\nHost: " + b"x" * 64, b"400"),  # a label over 63 characters
        (b"post /increment HTTP/1.1\r\nHost: x", b"501"),  # werkzeug would take it for POST
        (b"Post /counters HTTP/1.1\r\nHost: x", b"501"),
        (b"POST /increment?wait=" + b"0" * 4301 + b" HTTP/1.1\r\nHost: x", b"400"),  # int() refuses
    ],
)
def test_bad_requests_are_json_errors_that_change_nothing(
    a: TestNode, request_line: bytes, status: bytes
) -> None:
    written, _ = serve(a, request_line + b"\r\nContent-Length: 0\r\n\r\n")
    head, _, body = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status), head
    assert b"application/json" in head
    assert b'"error"' in body
    assert a.node.counters.values() == {}


def test_content_length_of_thousands_of_digits_is_a_400(a: TestNode) -> None:
    """Past 4,300 digits int() raises inside twisted.web: the client got no answer, the log a traceback."""
    written, hung_up = serve(
        a, b"POST /increment HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"
    )
    assert written.startswith(b"HTTP/1.1 400 ")
    assert hung_up
    assert a.count() == 0


def test_a_doubled_slash_redirects_to_where_it_routes(a: TestNode) -> None:
    """
    werkzeug merges slashes with a 308: the answer says where to (it had no
    Location), as a path with the query (werkzeug's URL names the socket's
    port, not one a client reached through a port mapping).
    """
    a.increment(2, name="x")
    written, _ = serve(a, b"POST /counters//x/increment?wait=0 HTTP/1.1\r\nHost: n:9088\r\n\r\n")
    assert written.startswith(b"HTTP/1.1 308 ")
    assert b"\r\nLocation: /counters/x/increment?wait=0\r\n" in written
    assert a.count("x") == 2


def test_keyed_batch_past_the_bound_is_a_400(net: Network, a: TestNode) -> None:
    """
    Peers refuse a key entry of more than MAX_BATCH writes: such a keyed
    batch was counted here, then blocked every push from this node.
    """
    b = net.add(9002)
    net.mesh()
    body = {f"c{i}": 1 for i in range(wire.MAX_BATCH + 1)}
    reply = net.call("POST", a.id, "/counters", json=body, headers={"Idempotency-Key": ["k"]})
    assert reply.code == 400
    assert "1000" in reply.json["error"]
    assert a.node.counters.values() == {}
    reply = net.call(
        "POST", a.id, "/counters", json=dict(list(body.items())[:-1]), headers={"Idempotency-Key": ["k"]}
    )
    assert reply.code == 200
    net.settle()
    assert b.count("c999") == 1
    # Without a key there is no entry for peers to refuse: only the body's size bounds it.
    reply = net.call("POST", a.id, "/counters", json={f"d{i}": 1 for i in range(2000)})
    assert reply.code == 200
    net.settle()
    assert b.count("d1999") == 1


def test_keyed_write_answered_at_the_lowest_value_replicates(net: Network, a: TestNode) -> None:
    """A key entry's count may be -2**63, the lowest value: peers refused it, and every push after it."""
    b = net.add(9002)
    net.mesh()
    low = {"z": {"127.0.0.1:9009/x": (0, MAX_SLOT)}}
    a.node.merge(low)
    b.node.merge(low)
    reply = net.call("POST", a.id, "/counters/z/decrement", headers={"Idempotency-Key": ["m"]})
    assert reply.json["count"] == -(2**63)
    net.call("POST", a.id, "/counters/w/increment")
    net.settle()
    assert (b.count("z"), b.count("w")) == (-(2**63), 1)
    assert "m" in b.node.counters.keys.state()
