"""
GET /status (the cluster as one node sees it), GET /version and the status
page at GET /, through StubTreq on in-memory nodes.
"""

from __future__ import annotations

import pytest

from dcounter import __version__
from dcounter.membership import PeerState
from tests.support import Network, TestNode, address, result_of

A = address(9001)
B = address(9002)
C = address(9003)


@pytest.fixture
def net() -> Network:
    return Network()


@pytest.fixture
def nodes(net: Network) -> list[TestNode]:
    nodes = net.add_many(3)
    net.mesh()
    return nodes


def test_status_lists_every_member_with_counts_and_lag(net: Network, nodes: list[TestNode]) -> None:
    a, b, c = nodes
    a.increment(3)
    net.settle()
    net.cut(C)  # c missed it: it lags by 3 ...
    b.increment(1)
    net.settle()
    net.heal(C)  # ... then by 4, but it answers
    status = net.call("GET", A, "/status").json
    assert status["node_id"] == A
    assert [m["id"] for m in status["members"]] == [A, B, C]
    by_id = {m["id"]: m for m in status["members"]}
    assert by_id[A]["self"] and by_id[A]["state"] == "alive"
    assert by_id[B]["counters"] == {"default": 4} and by_id[B]["lag"] == {"default": 0}
    assert by_id[C]["counters"] == {"default": 3} and by_id[C]["lag"] == {"default": 1}
    assert status["highest"] == {"default": 4}
    assert (status["agree"], status["converged"]) == (False, False)
    assert status["answered"] == 3


def test_status_converged_and_a_member_that_does_not_answer(net: Network, nodes: list[TestNode]) -> None:
    a, b, c = nodes
    a.increment(2)
    net.settle()
    assert net.call("GET", B, "/status").json["converged"] is True
    net.cut(C)
    status = net.call("GET", A, "/status").json
    dead = status["members"][2]
    assert dead["id"] == C and dead["counters"] is None and dead["lag"] is None
    assert dead["error"].startswith("no answer: ") and "refused" in dead["error"].lower()
    assert (status["answered"], status["agree"], status["converged"]) == (2, True, False)


def test_version(net: Network, nodes: list[TestNode]) -> None:
    reply = net.call("GET", A, "/version")
    assert reply.code == 200
    assert reply.json["version"] == __version__
    assert reply.json["node_id"] == A
    assert {"twisted", "python"} <= set(reply.json)


def test_status_page_is_self_contained_html(net: Network, nodes: list[TestNode]) -> None:
    d = net.request("GET", f"http://{A}/")
    net.settle()
    response = result_of(d)
    body = result_of(response.text())
    assert response.code == 200
    assert response.headers.getRawHeaders("Content-Type") == ["text/html; charset=utf-8"]
    assert 'fetch("/status"' in body
    # no external assets: nothing is loaded from another origin
    for marker in ("http://", "https://", "<link", "src="):
        assert marker not in body.replace('href="/metrics"', "").replace('href="/status"', "")


def test_dead_members_are_not_asked(net: Network, nodes: list[TestNode]) -> None:
    a = nodes[0]
    net.cut(C)
    a.membership.mark(C, PeerState.DEAD, net.clock.seconds())
    asked = len(net.requests("GET", "/counters", to=C))
    status = net.call("GET", A, "/status").json
    assert len(net.requests("GET", "/counters", to=C)) == asked
    dead = status["members"][2]
    assert (dead["state"], dead["counters"], dead["error"]) == ("dead", None, "believed dead: not asked")
