"""
The HTTP API and admission with and without a cluster key, through StubTreq
against in-memory nodes: what a key and the tokens guard, and what they
leave open.
"""

from __future__ import annotations

import json

import pytest

from dcounter import keyring, wire
from dcounter.keyring import Keyring
from tests.support import CLUSTER, Network, TestNode
from tests.test_api import serve

KEY = "cluster-key-0123456789"
OTHER = "another-key-0123456789"
TOKEN = Keyring([KEY]).admin_token()


def keyed(net: Network, port: int, keys=(KEY,), **kw) -> TestNode:
    return net.add(port, keys=list(keys), **kw)


def bearer(token: str | None) -> dict[str, list[str]]:
    return {"Authorization": [f"Bearer {token}"]}


def test_keyed_nodes_admit_each_other_and_replicate() -> None:
    net = Network()
    a, b = keyed(net, 9001), keyed(net, 9002)
    net.settle()
    assert net.call("POST", a.id, "/register", json={"id": b.id}, headers=bearer(TOKEN)).code == 200
    net.settle()
    assert b.id in a.membership.live() and a.id in b.membership.live()
    a.increment(5)
    net.settle()
    assert b.count() == 5
    assert a.api.guard.accepted["http"] > 0 and a.api.guard.dropped["http"] == {}


@pytest.mark.parametrize("keys", [(), (OTHER,)], ids=["no key", "another key"])
def test_a_node_without_the_key_is_never_admitted(keys) -> None:
    net = Network()
    a = keyed(net, 9001)
    stranger = net.add(9002, keys=list(keys))
    reply = net.call("POST", a.id, "/register", json={"id": stranger.id}, headers=bearer(TOKEN))
    assert reply.code == 502
    a.health.consider(stranger.id, contact=True)
    net.settle()
    assert a.membership.known() == []
    # and its pushes change nothing
    stranger.membership.heard_from(a.id, 0.0)
    stranger.increment(100)
    net.settle()
    assert a.count() == 0


def test_an_unkeyed_client_gets_a_plain_health_answer() -> None:
    """Monitors still read /health; the answer is unsigned, so no peer admits it."""
    net = Network()
    keyed(net, 9001)
    reply = net.call("GET", "127.0.0.1:9001", "/health")
    assert reply.code == 200
    assert reply.json["auth"] == "on"
    assert reply.header(wire.AUTH_HEADER) is None


def test_without_a_key_the_node_is_open_and_says_so() -> None:
    net = Network()
    a, b = net.add_many(2)
    assert net.call("GET", a.id, "/health").json["auth"] == "off"
    assert net.call("GET", a.id, "/discovery").json["auth"]["auth"] == "off"
    assert net.call("POST", a.id, "/register", json={"id": b.id}).code == 200
    assert net.call("POST", a.id, "/sync", json={"count": 7}).code == 200
    assert net.call("POST", a.id, "/remove-peer", json={"id": b.id}).code == 200


@pytest.mark.parametrize(
    "path, body",
    [
        ("/register", {"id": "127.0.0.1:9002"}),
        ("/remove-peer", {"id": "127.0.0.1:9002"}),
        ("/sync", {"count": 7}),
    ],
)
@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", TOKEN], ids=["none", "wrong", "right"])
def test_operator_endpoints_need_the_token(path, body, token) -> None:
    """401 without the right bearer token, changing nothing; the derived token works."""
    net = Network()
    a, b = keyed(net, 9001), keyed(net, 9002)
    if path == "/remove-peer":
        net.call("POST", a.id, "/register", json={"id": b.id}, headers=bearer(TOKEN))
    before = (a.count(), a.membership.known())
    headers = {} if token is None else bearer(token)
    reply = net.call("POST", a.id, path, json=body, headers=headers)
    if token == TOKEN:
        assert reply.code == 200, reply
    else:
        assert reply.code == 401, reply
        assert set(reply.json) == {"error"}
        assert reply.header("WWW-Authenticate") == 'Bearer realm="dcounter"'
        assert (a.count(), a.membership.known()) == before


def test_an_explicit_admin_token_replaces_the_derived_one() -> None:
    net = Network()
    a = keyed(net, 9001, admin_token="operator-token-0123")
    assert net.call("POST", a.id, "/sync", json={"count": 3}, headers=bearer(TOKEN)).code == 401
    assert (
        net.call("POST", a.id, "/sync", json={"count": 3}, headers=bearer("operator-token-0123")).code == 200
    )
    assert a.count() == 3


def test_client_token_guards_client_endpoints_only() -> None:
    net = Network()
    a = net.add(9001, client_token="client-token-0123")
    for method, path in [("GET", "/count"), ("POST", "/increment"), ("GET", "/counters"), ("GET", "/peers")]:
        assert net.call(method, a.id, path).code == 401
        assert net.call(method, a.id, path, headers=bearer("client-token-0123")).code == 200
    assert a.count() == 1
    assert net.call("GET", a.id, "/health").code == 200
    assert net.call("GET", a.id, "/health").json["auth"] == "on"


def test_a_signed_sync_in_another_nodes_name_is_refused() -> None:
    """A key holder cannot push state as another member."""
    net = Network()
    a, b, c = keyed(net, 9001), keyed(net, 9002), keyed(net, 9003)
    net.mesh()
    c.increment(3)
    net.settle()
    sync = wire.Sync(b.id, "x", CLUSTER, {"default": {f"{b.id}/x": (1000, 0)}})
    # c signs a message that names b as its sender
    data = json.dumps(wire.encode_sync(sync)).encode()
    auth = c.api.guard.seal(keyring.request_context("POST", "/sync", a.id), data, net.clock.seconds())
    reply = net.call("POST", a.id, "/sync", data=data, headers={wire.AUTH_HEADER: [wire.encode_auth(auth)]})
    assert reply.code == 401
    assert a.count() == 3


def test_with_a_client_token_alone_operator_endpoints_take_it() -> None:
    net = Network()
    a = net.add(9001, client_token="client-token-0123")
    assert net.call("POST", a.id, "/sync", json={"count": 3}).code == 401
    assert net.call("POST", a.id, "/sync", json={"count": 3}, headers=bearer("client-token-0123")).code == 200
    assert a.count() == 3


def test_auth_drops_are_metrics() -> None:
    net = Network()
    a = keyed(net, 9001)
    assert net.call("POST", a.id, "/sync", data=b"{}", headers={wire.AUTH_HEADER: ["garbage"]}).code == 401
    exposition = a.api.metrics.exposition().decode()
    assert 'dcounter_auth_dropped_total{channel="http",reason="malformed"} 1.0' in exposition
    assert 'dcounter_auth_accepted_total{channel="udp"} 0.0' in exposition


def test_a_keyed_seed_by_another_name_is_admitted() -> None:
    """A probe is not bound to a recipient: a seed named otherwise than its id still answers signed."""
    net = Network()
    b = keyed(net, 9002)
    net.alias("localhost:9002", b)
    a = keyed(net, 9001, seeds=["localhost:9002"])
    a.health.check_once()
    net.settle()
    assert a.membership.live() == [b.id]
    assert a.health.admission.counts["admitted"] == 1


@pytest.mark.parametrize(
    "spelling",
    [
        "//register",
        "/%2Fregister",
        "//remove-peer",
        "/%2fremove-peer",
        "///register",  # werkzeug merges any run of slashes; only the first was stripped
        "////register",
        "/%2F%2Fregister",
        "//%2fregister",
        "///remove-peer",
    ],
)
def test_an_operator_endpoint_spelled_otherwise_still_needs_the_token(spelling: str) -> None:
    """
    Klein routes '//register', '///register' and '/%2Fregister' to /register
    (it joins the path's segments, and werkzeug merges runs of slashes): who
    may call it is decided on the path Klein routes.
    """
    net = Network()
    a, b = keyed(net, 9001), keyed(net, 9002)
    net.call("POST", a.id, "/register", json={"id": b.id}, headers=bearer(TOKEN))
    before = a.membership.known()
    reply = net.call("POST", a.id, spelling, json={"id": b.id if "remove" in spelling else "127.0.0.1:9003"})
    assert reply.code == 401, reply
    assert a.membership.known() == before


@pytest.mark.parametrize(
    "target", [b"xregister", b"a/register", b"*register", b"\\/register", b"x/remove-peer"]
)
def test_a_target_not_starting_with_a_slash_is_a_400(target: bytes) -> None:
    """
    twisted.web drops a target's first character to make the segments Klein
    routes: "xregister" reached /register while the token check saw
    "xregister", which needs no token.
    """
    net = Network()
    a, b = keyed(net, 9001), keyed(net, 9002)
    net.call("POST", a.id, "/register", json={"id": b.id}, headers=bearer(TOKEN))
    before = a.membership.known()
    body = b'{"id": "%s"}' % (b.id if b"remove" in target else "127.0.0.1:9003").encode()
    written, _ = serve(
        a, b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (target, len(body), body)
    )
    assert written.startswith(b"HTTP/1.1 400 "), written[:100]
    assert a.membership.known() == before


@pytest.mark.parametrize("method, path", [(b"GET", b"/count"), (b"POST", b"/register"), (b"POST", b"/sync")])
def test_a_non_ascii_token_is_a_401(method: bytes, path: bytes) -> None:
    """A bearer token of non-ASCII bytes is refused as any wrong token (it was a 500 and a traceback)."""
    net = Network()
    a = net.add(9001, client_token="client-token-0123")
    body = b'{"count": 1}' if path == b"/sync" else b'{"id": "127.0.0.1:9003"}'
    written, _ = serve(
        a,
        b"%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xc3\xa9\r\nContent-Length: %d\r\n\r\n%s"
        % (method, path, len(body), body),
    )
    assert written.startswith(b"HTTP/1.1 401 "), written[:200]
    assert written.endswith(b'"}\n') or b'{"error"' in written
    assert a.membership.known() == [] and a.count() == 0
