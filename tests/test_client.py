"""
PeerClient against peers that misbehave: stalls, floods, errors.
"""

from __future__ import annotations

import json

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import TimeoutError
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from dcounter import wire
from dcounter.client import AgentRequests, PeerClient, PeerError
from tests.support import failure_of, result_of

HELLO = {"status": "ok", "node_id": "127.0.0.1:9002", "incarnation": "i", "cluster": "c"}


class Peer(Resource):
    """
    A fake peer whose /health answers as told: C{body} with C{code}, or
    headers and a first chunk and then nothing (C{stall}).
    """

    isLeaf = True

    def __init__(self, body: bytes = json.dumps(HELLO).encode(), code: int = 200, stall: bool = False):
        super().__init__()
        self.body, self.code, self.stall = body, code, stall

    def render(self, request):
        request.setResponseCode(self.code)
        if self.stall:
            request.write(self.body[:10])
            return NOT_DONE_YET
        return self.body


def client(peer: Peer, clock: Clock, **kw) -> PeerClient:
    return PeerClient(StubTreq(peer), clock, timeout=0.5, **kw)


def test_hello_decodes_a_good_answer() -> None:
    clock = Clock()
    hello = result_of(client(Peer(), clock).hello("127.0.0.1:9002"))
    assert (hello.node_id, hello.cluster) == ("127.0.0.1:9002", "c")


def test_a_peer_that_stalls_mid_body_is_cut_off_at_the_deadline() -> None:
    """The deadline covers the body, not only the headers."""
    clock = Clock()
    d = client(Peer(stall=True), clock).hello("127.0.0.1:9002")
    assert not d.called
    clock.advance(0.49)
    assert not d.called
    clock.advance(0.02)
    assert failure_of(d).check(TimeoutError)


def test_an_answer_over_the_size_limit_is_refused() -> None:
    clock = Clock()
    d = client(Peer(body=b" " * 5000), clock, max_response=4096).hello("127.0.0.1:9002")
    failure = failure_of(d)
    assert failure.check(PeerError)
    assert "more than 4096 bytes" in failure.getErrorMessage()


def test_an_error_answer_does_not_echo_the_body() -> None:
    """What an arbitrary address answers is not repeated back to whoever asked us to probe it."""
    clock = Clock()
    d = client(Peer(body=b"secret-token", code=404), clock).hello("127.0.0.1:9002")
    failure = failure_of(d)
    assert failure.check(PeerError)
    assert "404" in failure.getErrorMessage()
    assert "secret" not in failure.getErrorMessage()


class Recorder(Resource):
    """A fake peer that records each request and answers C{body}."""

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.seen: list[tuple[bytes, bytes, bytes | None, bytes]] = []

    def render(self, request):
        self.seen.append(
            (request.method, request.path, request.getHeader(b"content-type"), request.content.read())
        )
        return self.body


def test_pushes_go_straight_to_the_agent_and_probes_through_treq() -> None:
    """
    Replication's requests skip treq's wrappers (AgentRequests) and say the
    same; a probe still goes through treq.
    """
    clock = Clock()
    probed, synced = Recorder(json.dumps(HELLO).encode()), Recorder(b'{"ok":true}')
    agent = RequestTraversalAgent(synced)
    peer = PeerClient(StubTreq(probed), clock, timeout=0.5, replication_http=AgentRequests(agent))
    push = wire.Sync("127.0.0.1:9001", "i", "c", {"x": {"127.0.0.1:9001/i": (2, 1)}})
    d = peer.sync("127.0.0.1:9002", push)
    agent.flush()
    assert result_of(d) is None
    ((method, path, content_type, body),) = synced.seen
    assert (method, path, content_type) == (b"POST", b"/sync", b"application/json")
    assert json.loads(body) == json.loads(json.dumps(wire.encode_sync(push)))
    assert result_of(peer.hello("127.0.0.1:9002")).node_id == "127.0.0.1:9002"
    assert [seen[1] for seen in probed.seen] == [b"/health"]
    assert len(synced.seen) == 1
