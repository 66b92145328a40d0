"""
The hot routes served without Klein (dcounter.api.HotPaths): the same
answers as Klein's routes, for good and bad requests, and writes that
become durable later.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource

from dcounter import wire
from dcounter.counter import MAX_SLOT
from dcounter.store import Durable, SQLiteStore, StoreError
from tests.support import ManualWorker, Network, TestNode, address, result_of, told

A, B = address(9001), address(9002)

REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/count", {}),
    ("POST", "/increment", {}),
    ("POST", "/increment", {"json": {"by": 5}}),
    ("POST", "/increment", {"data": b"{}"}),
    ("POST", "/increment", {"json": {"by": 0}}),
    ("POST", "/increment", {"json": {"by": 2**53}}),
    ("POST", "/increment", {"json": {"by": 1, "x": 2}}),
    ("POST", "/increment", {"data": b"nope"}),
    ("POST", "/increment", {"json": [1]}),
    ("GET", "/increment", {}),
    ("PUT", "/count", {}),
    ("HEAD", "/count", {}),
    ("GET", "/count/", {}),
    ("GET", "/count?x=1", {}),
    ("GET", "/counters/hits", {}),
    ("POST", "/counters/hits/increment", {}),
    ("POST", "/counters/hits/increment", {"json": {"by": 9}}),
    ("POST", "/counters/hits/decrement", {"json": {"by": 2}}),
    ("GET", "/counters/hits", {}),
    ("POST", "/counters/hits/decrement", {"json": {"by": -1}}),
    ("GET", "/counters/hits/increment", {}),
    ("POST", "/counters/hits/other", {}),
    ("POST", "/counters/hits/increment/", {}),
    ("POST", "/counters//increment", {}),
    ("GET", "/counters/", {}),
    ("GET", "/counters/_x", {}),
    ("POST", "/counters/_x/increment", {}),
    ("POST", "/counters/a%20b/increment", {}),
    ("POST", "/counters/h%69ts/increment", {}),
    ("GET", "/counters/" + "x" * 129, {}),
    ("POST", "/counters/" + "x" * 128 + "/decrement", {}),
    ("GET", "/counters/caf%C3%A9", {}),
    ("GET", "/counters/full", {}),
    ("POST", "/counters/full/increment", {"json": {"by": 2}}),
    ("GET", "/counters/full", {}),
    ("POST", "/sync", {"json": {"count": 3}}),
    ("POST", "/sync", {"json": {"count": -1}}),
    ("POST", "/sync", {"data": b"{"}),
    (
        "POST",
        "/sync",
        {"json": {"from": "127.0.0.1:9009", "incarnation": "i", "cluster": "dcounter", "state": {}}},
    ),
    (
        "POST",
        "/sync",
        {"json": {"from": "127.0.0.1:9009", "incarnation": "i", "cluster": "other", "state": {}}},
    ),
    ("GET", "/sync", {}),
    ("POST", "/sync?x=1", {"json": {"count": 4}}),
    ("GET", "/count", {}),
]


def exchange(net: Network, to: str, method: str, path: str, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    d = net.request(method, f"http://{to}{path}", **kwargs)
    net.settle()
    results: list[Any] = []
    d.addBoth(results.append)
    response = results[0]
    body: list[bytes] = []
    response.content().addBoth(body.append)
    headers = {
        name: response.headers.getRawHeaders(name)
        for name in ("Content-Type", "Cache-Control", "Allow", "Location")
    }
    return response.code, headers, body[0].replace(to.encode(), b"NODE")


def test_same_answers_as_klein() -> None:
    """Every request, good or bad, gets from the hot paths what Klein's routes give."""
    net = Network()
    hot, klein = net.add(9001), net.add(9002)
    klein.resource = klein.api.resource(hot_paths=False)  # Klein alone, as before the hot paths
    for node in (hot, klein):
        node.node.merge({"full": {node.node.replica: (MAX_SLOT - 1, 0)}})
    for method, path, kwargs in REQUESTS:
        ours = exchange(net, A, method, path, kwargs)
        theirs = exchange(net, B, method, path, kwargs)
        assert ours == theirs, (method, path)
    assert hot.node.counters.values() == klein.node.counters.values()


class SlowStore:
    """A store whose saves become durable only when the test says."""

    keeps_nothing = False

    def __init__(self, store: Any) -> None:
        self.identity = store.identity
        self.pending: list[Deferred[None]] = []

    def save(self, state: Any, **_: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def save_then(self, state: Any, done: Durable) -> None:
        told(self.save(state), done)

    def commit(self, failure: Exception | None = None) -> None:
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(None) if failure is None else d.errback(failure)


@pytest.fixture
def slow() -> tuple[Network, TestNode, SlowStore]:
    net = Network()
    a = net.add(9001)
    store = SlowStore(a.store)
    a.node.store = store  # type: ignore[assignment]
    return net, a, store


def test_answer_waits_until_durable(slow: tuple[Network, TestNode, SlowStore]) -> None:
    """An increment is answered once the store has made it durable, not before."""
    net, a, store = slow
    results: list[Any] = []
    net.request("POST", f"http://{A}/counters/x/increment", json={"by": 3}).addBoth(results.append)
    net.settle()
    assert results == []
    store.commit()
    net.settle()
    (response,) = results
    assert response.code == 200
    body: list[bytes] = []
    response.content().addBoth(body.append)
    assert body == [b'{"name":"x","count":3,"node_id":"127.0.0.1:9001"}\n']


def test_client_leaving_keeps_the_write(slow: tuple[Network, TestNode, SlowStore]) -> None:
    """A client that goes away before the commit gets nothing; the write still counts and replicates."""
    net, a, store = slow
    b = net.add(9002)
    net.mesh()
    d = net.request("POST", f"http://{A}/increment")
    net.settle()
    d.cancel()  # the client hangs up
    client: list[Any] = []
    d.addBoth(client.append)
    net.settle()
    store.commit()
    net.settle()
    assert [type(f.value) for f in client] == [ResponseNeverReceived]
    assert a.count() == 1
    assert b.count() == 1


def test_a_failed_commit_after_the_client_left_is_logged(slow: tuple[Network, TestNode, SlowStore]) -> None:
    """Nobody is left to answer: a write that fails after its client hung up is said in the log."""
    net, a, store = slow
    d = net.request("POST", f"http://{A}/counters/x/increment")
    net.settle()
    d.cancel()
    d.addErrback(lambda _: None)
    net.settle()
    with capturedLogs() as events:
        store.commit(StoreError("disk full"))
        net.settle()
    (event,) = [e for e in events if "log_failure" in e]
    assert event["name"] == "x" and event["log_failure"].check(StoreError)


def test_a_failed_commit_is_a_503(slow: tuple[Network, TestNode, SlowStore]) -> None:
    """A write whose commit fails is answered 503 once it does, and the error says why."""
    net, a, store = slow
    results: list[Any] = []
    net.request("POST", f"http://{A}/increment").addBoth(results.append)
    net.settle()
    store.commit(StoreError("disk full"))
    net.settle()
    (response,) = results
    assert response.code == 503
    body: list[bytes] = []
    response.content().addBoth(body.append)
    assert b"disk full" in body[0]


def test_writes_to_a_data_directory_are_answered_after_their_commit(tmp_path: Any) -> None:
    """
    With a real SQLite store: writes are answered once their group commit
    is done, with the values they made; one whose client left stands.
    """
    net = Network()
    a = net.add(9001)
    worker = ManualWorker()
    store = SQLiteStore(str(tmp_path), a.node.node_id, worker)
    store.start()
    a.node.store = store
    answered: list[Any] = []
    net.request("POST", f"http://{A}/counters/x/increment", json={"by": 2}).addBoth(answered.append)
    left = net.request("POST", f"http://{A}/counters/x/decrement")
    net.settle()
    left.cancel()  # that client hangs up before the commit
    left.addErrback(lambda _: None)
    net.settle()
    assert answered == [] and len(worker.jobs) == 1
    worker.run_all()
    net.settle()
    (response,) = answered
    body: list[bytes] = []
    response.content().addBoth(body.append)
    assert (response.code, body) == (200, [b'{"name":"x","count":2,"node_id":"127.0.0.1:9001"}\n'])
    assert worker.transactions == [[("x", a.node.replica, 2, 0)], [("x", a.node.replica, 2, 1)]]
    assert a.node.value("x") == 1
    assert result_of(store.stop()) is None


def test_a_push_whose_sender_left_before_the_commit_is_merged_and_not_answered(
    slow: tuple[Network, TestNode, SlowStore],
) -> None:
    """A peer that hangs up on its push still has it merged; nothing is written to the dead request."""
    net, a, store = slow
    b = net.add(9002)
    net.mesh()
    a.node.merge({"hits": {f"{B}/inc": (0, 0)}})  # nothing pending in the store from the mesh
    store.commit()
    sync = wire.Sync(B, b.node.identity.incarnation, a.node.cluster, {"hits": {f"{B}/inc": (3, 0)}})
    d = net.request("POST", f"http://{A}/sync", json=wire.encode_sync(sync))
    net.settle()
    assert store.pending  # the answer waits for the commit
    d.cancel()
    d.addErrback(lambda _: None)
    net.settle()
    with capturedLogs() as events:
        store.commit()
        net.settle()
    assert [e for e in events if "log_failure" in e] == []
    assert a.node.value("hits") == 3


class Recording(Resource):
    """A stand-in for Klein's resource: records what reaches it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def render(self, request: Any) -> bytes:
        self.seen.append((request.method.decode(), request.uri.decode()))
        return b'{"klein":true}\n'


def hot_then(node: TestNode, klein: Resource) -> Any:
    """C{node}'s API resource with C{klein} standing in for Klein's."""
    root = node.api.resource()
    root.klein = klein
    return root


@pytest.mark.parametrize(
    "method, uri",
    [
        ("POST", "/increment?wait=2"),
        ("GET", "/count?x=1"),
        ("POST", "/counters/x/increment?wait=1"),
        ("GET", "/count/"),
        ("HEAD", "/count"),
        ("GET", "/increment"),
        ("POST", "/counters/a%20b/increment"),
        ("POST", "/counters//increment"),
        ("GET", "/counters"),
        ("POST", "/counters"),
        ("GET", "/health"),
    ],
)
def test_what_goes_to_klein(method: str, uri: str) -> None:
    """Requests the hot paths do not answer exactly as Klein would reach Klein, untouched."""
    net = Network()
    a = net.add(9001)
    klein = Recording()
    a.resource = hot_then(a, klein)
    net.request(method, f"http://{A}{uri}")
    net.settle()
    assert klein.seen == [(method, uri)]
    assert a.node.counters.values() == {}


def test_sync_is_a_hot_path() -> None:
    """Both kinds of /sync, the original's and a peer's, are served without Klein."""
    net = Network()
    a = net.add(9001)
    klein = Recording()
    a.resource = hot_then(a, klein)
    net.request("POST", f"http://{A}/sync", json={"count": 3})
    net.request(
        "POST", f"http://{A}/sync", json={"from": B, "incarnation": "i", "cluster": "dcounter", "state": {}}
    )
    net.settle()
    assert klein.seen == []
    assert a.count() == 3


@pytest.mark.parametrize(
    "method, uri",
    [
        ("POST", "/increment"),
        ("POST", "/counters/x/increment"),
        ("POST", "/counters/x/decrement"),
    ],
)
def test_keyed_writes_go_to_klein(method: str, uri: str) -> None:
    """A write with an Idempotency-Key is Klein's: the keyed handling (replay, 422) lives there."""
    net = Network()
    a = net.add(9001)
    klein = Recording()
    a.resource = hot_then(a, klein)
    net.request(method, f"http://{A}{uri}", headers={"Idempotency-Key": "k-1"})
    net.settle()
    assert klein.seen == [(method, uri)]
    assert a.node.counters.values() == {}
