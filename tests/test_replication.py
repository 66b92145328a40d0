"""
Replication between in-memory nodes: pushes after local writes, one push in
flight per peer, retries, anti-entropy push-pull, and gossip.
"""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent

from dcounter import wire
from dcounter.membership import PeerState
from dcounter.replication import NotMember
from tests.support import CLUSTER, Network, Sent, TestNode, result_of


def pushes(net: Network, to: str | None = None, sender: str | None = None) -> list[Sent]:
    """The pushes (POST /sync without reply) made so far."""
    return [
        s
        for s in net.requests("POST", "/sync", to=to)
        if not s.body["reply"] and (sender is None or s.sender == sender)
    ]


def exchanges(net: Network, to: str | None = None) -> list[Sent]:
    """The anti-entropy rounds (POST /digest) opened so far."""
    return net.requests("POST", "/digest", to=to)


def counts(nodes: list[TestNode], name: str = "default") -> list[int]:
    return [n.count(name) for n in nodes]


def test_increments_reach_every_peer() -> None:
    """A write on one node reaches the others one reactor turn later."""
    net = Network()
    nodes = net.add_many(3)
    a, b, c = nodes
    net.mesh()
    a.increment(3)
    b.increment(name="hits")
    assert counts(nodes) == [3, 0, 0]
    net.settle()
    assert counts(nodes) == [3, 3, 3]
    assert counts(nodes, "hits") == [1, 1, 1]


def test_push_carries_only_durable_own_slots() -> None:
    """A push names the slots written, with their whole totals."""
    net = Network()
    a, b = net.add_many(2)
    net.mesh()
    a.increment(2)
    a.increment(5)
    net.settle()
    (push,) = pushes(net, to=b.id)
    assert push.body["state"] == {"default": {a.node.replica: [7, 0]}}
    assert push.body["from"] == a.id
    assert push.body["cluster"] == CLUSTER


def test_writes_in_one_turn_become_one_push_per_peer() -> None:
    """Many increments in one reactor turn are sent as one push to each peer."""
    net = Network()
    nodes = net.add_many(4)
    a = nodes[0]
    net.mesh()
    for _ in range(100):
        a.increment()
    net.settle()
    assert counts(nodes) == [100] * 4
    assert sorted(p.to for p in pushes(net)) == sorted(n.id for n in nodes[1:])


def test_one_push_in_flight_per_peer() -> None:
    """While a push to a peer is unanswered, new writes wait; they go after it."""
    net = Network()
    a, b, c = net.add_many(3)
    net.mesh()
    net.hold(b.id)
    a.increment()
    net.settle()
    assert len(pushes(net, to=b.id)) == 1
    for _ in range(3):
        a.increment()
        net.settle()
    assert len(pushes(net, to=b.id)) == 1  # the first is still unanswered
    assert len(pushes(net, to=c.id)) == 4  # a free peer gets each at once
    assert counts([a, b, c]) == [4, 0, 4]
    assert net.release(b.id) == 1
    assert b.count() == 4
    first, second = pushes(net, to=b.id)
    assert first.body["state"] == {"default": {a.node.replica: [1, 0]}}
    assert second.body["state"] == {"default": {a.node.replica: [4, 0]}}


def test_pushes_in_flight_are_bounded_and_taken_in_turn() -> None:
    """
    Past MAX_PUSHES unanswered pushes, the other peers wait, gathering
    later writes, and go as answers come back: the longest waiting first.
    """
    net = Network()
    a, *peers = net.add_many(21)
    net.mesh()
    bound = a.replicator.MAX_PUSHES
    assert bound < len(peers)
    for peer in peers:
        net.hold(peer.id)
    a.increment()
    net.settle()
    first = [p.to for p in pushes(net, sender=a.id)]
    assert len(first) == bound
    a.increment()  # the waiting peers gather it
    net.settle()
    assert len(pushes(net, sender=a.id)) == bound
    net.release(first[0])
    net.settle()
    waiting = [p.id for p in peers if p.id not in first]
    second = [p.to for p in pushes(net, sender=a.id)][bound:]
    assert len(second) == 1 and second[0] in waiting  # not first[0] again, which waited less
    for peer in peers:
        net.release(peer.id)
    net.settle(rounds=30)
    assert counts(peers) == [2] * len(peers)
    assert len(pushes(net, sender=a.id)) < 2 * len(peers)  # the waiting peers got both writes in one


def test_a_returning_peer_has_a_few_rounds_not_one_with_every_node() -> None:
    """In a large cluster a peer back from the dead has about JOIN_ROUNDS rounds, not N."""
    net = Network()
    nodes = net.add_many(40)
    net.mesh()
    b = nodes[-1]
    now = net.clock.seconds()
    for n in nodes[:-1]:
        n.membership.mark(b.id, PeerState.DEAD, now)
    before = len(exchanges(net))
    for n in nodes[:-1]:
        n.membership.heard_from(b.id, now)
    net.settle()
    rounds = len(exchanges(net)) - before
    assert 0 < rounds <= 3 * nodes[0].replicator.JOIN_ROUNDS


def test_a_newcomer_to_a_large_cluster_learns_every_member() -> None:
    """One that contacted a member before being admitted has a round with it, and learns the rest."""
    net = Network()
    members = net.add_many(30)
    net.mesh(members)
    newcomer = net.add(9100)
    newcomer.health.consider(members[0].id)
    net.settle(rounds=30)
    assert newcomer.membership.live() == sorted(m.id for m in members)


def test_push_that_times_out_is_retried() -> None:
    """A push the peer never answers times out on the clock; the next flush resends it."""
    net = Network()
    a, b = net.add_many(2)
    net.mesh()
    net.hold(b.id)
    a.increment()
    net.settle()
    net.advance(1.0)  # past the client's timeout
    assert net.release(b.id) == 0  # the held request was given up
    assert b.count() == 0
    a.replicator.flush()
    net.settle()
    assert b.count() == 1
    assert len(pushes(net, to=b.id)) == 2


def test_failed_push_is_retried_on_next_flush() -> None:
    """A refused push keeps its slots; the next flush sends them."""
    net = Network()
    a, b = net.add_many(2)
    net.mesh()
    net.cut(b.id)
    a.increment(2)
    net.settle()
    assert len(pushes(net, to=b.id)) == 1
    net.heal(b.id)
    a.replicator.flush()
    net.settle()
    assert b.count() == 2
    assert len(pushes(net, to=b.id)) == 2


def test_failed_push_is_not_retried_in_a_busy_loop() -> None:
    """A refused push waits for the next write or anti-entropy round, not the next turn."""
    net = Network()
    a, b = net.add_many(2)
    net.mesh()
    net.cut(b.id)
    a.increment()
    net.settle(rounds=50)
    assert len(pushes(net, to=b.id)) == 1
    a.increment()
    net.settle()
    assert len(pushes(net, to=b.id)) == 2


def test_failed_push_is_retried_by_anti_entropy() -> None:
    """The anti-entropy loop flushes what a failed push left behind."""
    net = Network()
    a, b = net.add_many(2, anti_entropy_interval=2.0)
    net.mesh()
    a.replicator.startService()
    net.cut(b.id)
    a.increment()
    net.settle()
    net.heal(b.id)
    assert b.count() == 0
    net.advance(2.0)
    assert b.count() == 1
    a.replicator.stopService()


def test_anti_entropy_repairs_a_partitioned_node() -> None:
    """A node cut off during writes on both sides converges once the cut heals."""
    net = Network()
    nodes = net.add_many(3)
    a, b, c = nodes
    net.mesh()
    for node in nodes:
        node.replicator.startService()
    net.cut(c.id)
    a.increment(10)
    b.increment(20)
    c.increment(300)
    net.settle()
    assert counts(nodes) == [30, 30, 300]
    net.heal(c.id)
    net.advance(6.0)
    assert counts(nodes) == [330, 330, 330]
    for node in nodes:
        node.replicator.stopService()


def test_exchange_is_push_pull() -> None:
    """One exchange leaves both sides with both sides' state."""
    net = Network()
    a, b = net.add_many(2)
    a.increment(4)
    b.increment(6, name="hits")
    a.membership.heard_from(b.id, 0.0)  # a learns of b: push-pull at once
    net.settle()
    assert a.node.counters.values() == b.node.counters.values() == {"default": 4, "hits": 6}
    assert len(exchanges(net, to=b.id)) >= 1


def test_push_pull_on_join() -> None:
    """A node admitted as a peer is pulled from and pushed to at once."""
    net = Network()
    a, b, joiner = net.add_many(3)
    net.mesh([a, b])
    a.increment(5)
    net.settle()
    joiner.increment(7)
    a.health.consider(joiner.id)
    net.settle()
    assert joiner.id in a.membership.live()
    assert exchanges(net, to=joiner.id)
    assert a.count() == joiner.count() == 12
    assert a.id in joiner.membership.live()  # the joiner admitted a back


def test_dead_peer_returning_gets_push_pull() -> None:
    """A dead peer that comes back is synced with at once, missed writes included."""
    net = Network()
    a, b = net.add_many(2)
    net.mesh()
    now = net.clock.seconds()
    a.membership.mark(b.id, PeerState.DEAD, now)
    assert a.membership.get(b.id).state is PeerState.DEAD
    a.increment(3)
    net.settle()
    assert pushes(net, to=b.id) == []  # a dead peer is not pushed to
    a.membership.heard_from(b.id, now)
    net.settle()
    assert b.count() == 3


def test_gossip_spreads_membership() -> None:
    """A node that knows one member learns all of them, and they learn it."""
    net = Network()
    members = net.add_many(4)
    net.mesh(members)
    newcomer = net.add(9100)
    newcomer.health.consider(members[0].id)
    net.settle()
    assert newcomer.membership.live() == sorted(m.id for m in members)
    for m in members:
        assert newcomer.id in m.membership.live()
    for m in members:  # each admitted only after a probe of its own /health
        first = next(s for s in net.sent if s.sender == newcomer.id and s.to == m.id)
        assert (first.method, first.path) == ("GET", "/health")


def test_gossip_does_not_admit_what_does_not_answer() -> None:
    """A member named in gossip that does not answer is not admitted."""
    net = Network()
    a, b = net.add_many(2)
    net.mesh()
    ghost = "127.0.0.1:9099"
    sync = wire.Sync(b.id, "inc", CLUSTER, {}, members=(ghost,))
    a.replicator.received(sync)
    net.settle()
    assert ghost not in a.membership
    assert net.requests("GET", "/health", to=ghost)


def test_gossip_skips_quarantined() -> None:
    """A member an operator removed is not probed when gossip names it."""
    net = Network()
    a, b, c = net.add_many(3)
    net.mesh()
    a.membership.remove(c.id, net.clock.seconds())
    before = len(net.requests("GET", "/health", to=c.id))
    a.replicator.received(wire.Sync(b.id, "inc", CLUSTER, {}, members=(c.id,)))
    net.settle()
    assert c.id not in a.membership
    assert len(net.requests("GET", "/health", to=c.id)) == before


def test_sync_from_another_cluster_is_refused() -> None:
    """A sync from another cluster's node is a 403 and changes nothing."""
    net = Network()
    a = net.add(9001)
    stranger = net.add(9002, cluster="other")
    stranger.increment(1000)
    stranger.membership.heard_from(a.id, 0.0)  # stranger pushes-pulls with a
    net.settle()
    (attempt,) = exchanges(net, to=a.id)
    assert attempt.body["cluster"] == "other"
    assert a.count() == 0
    assert stranger.count() == 1000  # and a sent nothing back
    assert a.membership.known() == []
    reply = net.call("POST", a.id, "/digest", json=attempt.body)
    assert reply.code == 403
    assert a.count() == 0


def test_received_heard_from_sender() -> None:
    """A sync from a known peer counts as hearing from it (a suspect is alive again)."""
    net = Network()
    a, b = net.add_many(2)
    net.mesh()
    a.membership.mark(b.id, PeerState.SUSPECT, net.clock.seconds())
    assert a.membership.get(b.id).state is PeerState.SUSPECT
    b.increment()
    net.settle()
    assert a.membership.get(b.id).state is PeerState.ALIVE
    assert a.count() == 1


def test_anti_entropy_never_raises() -> None:
    """An anti-entropy round that fails logs and returns; the loop goes on."""
    net = Network()
    a, b = net.add_many(2, anti_entropy_interval=2.0)
    net.mesh()
    calls: list[str] = []

    def broken(peer: str, message: object, buckets: int, keys_before: float | None = None) -> None:
        calls.append(peer)
        raise RuntimeError("boom")

    a.replicator.client.digest = broken  # type: ignore[method-assign]
    a.replicator.anti_entropy()  # does not raise
    assert calls == [b.id]
    a.replicator.startService()  # a round at once, then one every 2 s
    net.advance(6.0)
    assert calls == [b.id] * 5
    a.replicator.stopService()


def test_stop_pushes_pending_writes_once() -> None:
    """
    Stopping the replicator cancels the flush not yet run and pushes what
    each live peer does not hold yet, once; stop fires when they answered.
    """
    net = Network()
    a, b, c = net.add_many(3)
    net.mesh()
    a.replicator.startService()
    net.settle()
    before = len(pushes(net, sender=a.id))
    a.increment(2)
    stopped = a.replicator.stopService()
    net.settle()
    assert stopped.called
    assert len(pushes(net, sender=a.id)) - before == 2
    assert counts([b, c]) == [2, 2]
    assert net.clock.getDelayedCalls() == []
    # Nothing more to say: a second stop sends nothing.
    a.replicator.startService()
    net.settle()
    sent = len(pushes(net, sender=a.id))
    a.replicator.stopService()
    net.settle()
    assert len(pushes(net, sender=a.id)) == sent


def test_sync_from_a_stranger_changes_nothing_and_considers_it() -> None:
    """
    A sync from a node not admitted is refused (NotMember, a 403 over HTTP):
    nothing merged, nobody it names probed; its sender is probed, and once
    admitted, its state arrives by anti-entropy.
    """
    net = Network()
    a, b = net.add_many(2)
    b.increment(7)
    ghost = "127.0.0.1:9099"
    sync = wire.Sync(b.id, b.node.identity.incarnation, CLUSTER, b.node.outgoing(), members=(ghost,))
    net.hold(b.id)  # b's answer to a's probe waits
    with pytest.raises(NotMember):
        a.replicator.received(sync)
    reply = net.call("POST", a.id, "/sync", json=wire.encode_sync(sync))
    assert reply.code == 403
    assert a.count() == 0
    assert b.id not in a.membership
    assert len(net.requests("GET", "/health", to=b.id)) == 1  # one probe, however many syncs
    net.release(b.id)
    net.settle()
    assert net.requests("GET", "/health", to=ghost) == []
    assert b.id in a.membership  # b answered as itself
    assert a.count() == 7  # admitted: pushed-pulled at once


def test_sync_from_an_unreachable_claimed_sender_changes_nothing() -> None:
    """
    Two syncs claiming to come from 127.0.0.1:1, where nothing answers (the
    issue's 'ghost' counter at 2^64-1 on every node): refused, not merged.
    """
    net = Network()
    a = net.add(9001)
    for replica in ("127.0.0.1:1/x", "127.0.0.1:1/y"):
        forged = wire.Sync("127.0.0.1:1", "x", CLUSTER, {"ghost": {replica: (2**63 - 1, 0)}})
        assert net.call("POST", a.id, "/sync", json=wire.encode_sync(forged)).code == 403
    net.settle()
    assert "ghost" not in a.node.counters
    assert a.membership.known() == []


def test_stop_waits_a_bounded_time_and_logs_what_was_not_delivered() -> None:
    """
    A peer that does not answer the last push holds up stop for
    C{stop_timeout} at most; the log says what it did not get.
    """
    net = Network()
    a, b, c = net.add_many(3)
    net.mesh()
    a.replicator.stop_timeout = 2.0
    a.replicator.startService()
    net.settle()
    net.hold(c.id)
    a.increment(3)
    with capturedLogs() as events:
        stopped = a.replicator.stopService()
        net.settle()
        assert not stopped.called
        net.clock.advance(0.7)  # the client's own timeout (0.75 s) is shorter
        net.clock.advance(0.1)
        net.settle()
    assert stopped.called
    assert counts([b]) == [3]
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1
    assert f"could not deliver 3 increments and decrements in 1 counters to {c.id}" in warnings[0]


def test_write_concern_counts_peers_that_hold_the_write() -> None:
    """
    replicated() fires once N peers acknowledged a push (or push-pull)
    holding the write, or at the timeout with how many did.
    """
    net = Network()
    a, b, c = net.add_many(3)
    net.mesh()
    net.hold(c.id)
    a.increment(1)
    key, slot = ("default", a.node.replica), a.node.own_slot("default")
    one = a.replicator.replicated(key, slot, 1, timeout=5.0)
    both = a.replicator.replicated(key, slot, 2, timeout=5.0)
    net.settle()
    assert result_of(one) == 1
    assert not both.called
    net.release(c.id)
    net.advance(2.0)  # the held push timed out; anti-entropy or the retry delivers
    assert result_of(both) == 2
    # Unreachable peers: the time runs out, with how many hold it.
    net.cut(b.id)
    net.cut(c.id)
    a.increment(1)
    slot = a.node.own_slot("default")
    late = a.replicator.replicated(key, slot, 2, timeout=1.0)
    net.advance(1.0)
    assert result_of(late) == 0
    assert a.replicator.replicated(key, (0, 0), 0, timeout=1.0).called


def _earlier(node: TestNode) -> str:
    """A replica id of an incarnation of C{node} before its current one."""
    return f"{node.id}/{0:011x}aaaaaa"


def test_a_node_folds_its_earlier_incarnations_once_every_member_caught_up() -> None:
    """
    A node restored from an old copy holds less of its earlier slot than a
    peer does: it folds only after a round with every member, so the fold
    is the largest copy, and every node ends with the fold alone.
    """
    net = Network()
    nodes = net.add_many(3, fold_after=5.0)
    a, b, c = nodes
    net.mesh()
    for node in nodes:
        node.replicator.startService()
    a.node.merge({"default": {_earlier(a): (3, 0)}})
    b.node.merge({"default": {_earlier(a): (5, 0)}})
    assert a.node.fold_pending
    net.advance(4.0)
    assert a.node.fold_pending  # not before fold_after
    net.advance(20.0)
    assert not a.node.fold_pending
    fold = f"{a.id}/folded-{0:011x}aaaaaa"
    assert [n.node.counters.state() for n in nodes] == [{"default": {fold: (5, 0)}}] * 3
    assert counts(nodes) == [5, 5, 5]
    for node in nodes:
        node.replicator.stopService()


def test_a_dead_member_holds_a_fold_back_until_it_is_forgotten() -> None:
    """A member that cannot be asked what it holds may hold more: no fold."""
    net = Network()
    nodes = net.add_many(3, fold_after=1.0)
    a, b, c = nodes
    net.mesh()
    a.replicator.startService()
    a.node.merge({"default": {_earlier(a): (3, 0)}})
    a.membership.mark(c.id, PeerState.DEAD, net.clock.seconds())
    net.advance(30.0)
    assert a.node.fold_pending
    a.membership.remove(c.id, net.clock.seconds())
    net.advance(4.0)
    assert not a.node.fold_pending
    assert a.node.counters.state() == {"default": {f"{a.id}/folded-{0:011x}aaaaaa": (3, 0)}}
    a.replicator.stopService()


def test_a_member_from_before_the_start_holds_a_fold_back() -> None:
    """
    A member this node had before it restarted, down now, may hold more of
    its earlier slots: no fold until it is caught up with, or has been
    silent since the start for as long as a dead member is remembered.
    """
    net = Network()
    nodes = net.add_many(3, fold_after=1.0)
    a, b, c = nodes
    net.mesh([a, b])
    a.replicator.startService()
    a.node.remembered = {b.id, c.id}  # as loaded from its store: c is down
    a.node.merge({"default": {_earlier(a): (3, 0)}})
    net.advance(60.0)
    assert a.node.fold_pending
    net.advance(a.membership.forget_after)
    assert not a.node.fold_pending
    assert a.node.remembered == {b.id}
    a.replicator.stopService()


def test_members_are_remembered_as_they_come_and_go() -> None:
    net = Network()
    a, b = net.add_many(2)
    net.mesh()
    assert a.node.remembered == {b.id}
    a.membership.remove(b.id, net.clock.seconds())
    assert a.node.remembered == set()
