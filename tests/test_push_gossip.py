"""
Writes past the switch point (--gossip-above): a flush goes to --push-fanout
random peers, and each node forwards what grew from a push, once, to as many
others; anti-entropy repairs what the gossip missed; ?wait=N still waits for
N peers.  In-memory nodes on one Clock, seeded choices.
"""

from __future__ import annotations

import json

from dcounter import wire
from tests.support import CLUSTER, Network, Sent, TestNode, result_of


def pushes(net: Network, sender: str | None = None) -> list[Sent]:
    """The pushes with state (POST /sync, not a push-pull, not rumors alone)."""
    return [
        s
        for s in net.requests("POST", "/sync")
        if not s.body["reply"] and s.body["state"] and (sender is None or s.sender == sender)
    ]


def gossiping(count: int, fanout: int = 3, above: int = 5) -> tuple[Network, list[TestNode]]:
    net = Network()
    nodes = net.add_many(count, push_fanout=fanout, gossip_above=above)
    net.mesh()
    return net, nodes


def test_below_the_switch_every_peer_gets_the_write() -> None:
    net = Network()
    nodes = net.add_many(5, gossip_above=5)
    net.mesh()
    a = nodes[0]
    assert not a.replicator.gossiping()  # 5 nodes: not more than 5
    a.increment()
    net.settle()
    assert sorted(p.to for p in pushes(net)) == sorted(n.id for n in nodes[1:])
    assert len(pushes(net)) == 4  # nobody forwards
    # A push leaves out the member list (anti-entropy carries it): it was most of its bytes.
    assert all(not p.body.get("members") for p in pushes(net))


def test_past_the_switch_a_write_goes_to_fanout_peers_and_on() -> None:
    """The writer pushes to K peers; each node that learns the write forwards it once to K others."""
    net, nodes = gossiping(20, fanout=3)
    a = nodes[0]
    assert a.replicator.gossiping()
    a.increment(5)
    net.settle(rounds=50)
    assert len(pushes(net, sender=a.id)) == 3
    reached = [n for n in nodes if n.count() == 5]
    assert len(reached) > 10  # epidemic: most, in a few hops
    by_sender: dict[str, list[Sent]] = {}
    for push in pushes(net):
        by_sender.setdefault(push.sender, []).append(push)
    for node in nodes:
        sent = by_sender.get(node.id, [])
        # Once per node (one flush, K peers), and only by nodes that had it.
        assert len(sent) <= 3
        if sent:
            assert node.count() == 5
        if node is not a and sent:
            first = next(p for p in pushes(net) if p.to == node.id)
            assert first.sender not in {p.to for p in sent}  # not back to where it came from
    assert len(pushes(net)) <= 3 * len(reached)


def test_anti_entropy_repairs_what_gossip_missed() -> None:
    net, nodes = gossiping(20, fanout=1)  # a fanout of 1 misses many
    nodes[0].increment()
    net.settle(rounds=50)
    for _ in range(30):
        if all(n.count() == 1 for n in nodes):
            break
        for n in nodes:
            n.replicator.anti_entropy()
        net.settle()
    assert [n.count() for n in nodes] == [1] * 20


def test_writes_of_one_turn_are_one_push_per_chosen_peer() -> None:
    net, nodes = gossiping(10)
    a = nodes[0]
    for name in ("x", "y", "z"):
        for _ in range(10):
            a.increment(name=name)
    net.settle(rounds=50)
    (first, *_rest) = mine = pushes(net, sender=a.id)
    assert len(mine) == 3
    assert set(first.body["state"]) == {"x", "y", "z"}


def test_a_slot_is_forwarded_once_per_value() -> None:
    """The same push twice: the second grows nothing, and is not forwarded."""
    net, nodes = gossiping(10)
    a, b = nodes[0], nodes[1]
    result_of(a.node.add("default", 2))
    sync = wire.Sync(a.id, a.node.identity.incarnation, CLUSTER, a.node.outgoing(), members=())
    b.replicator.received(sync)
    net.settle()
    assert len(pushes(net, sender=b.id)) == 3
    b.replicator.received(sync)
    net.settle()
    assert len(pushes(net, sender=b.id)) == 3


def test_push_pull_replies_are_not_forwarded() -> None:
    """What a node learns from its own anti-entropy round goes no further."""
    net, nodes = gossiping(10)
    a, b = nodes[0], nodes[1]
    net.cut(a.id)
    b.increment()  # a misses it
    net.settle(rounds=50)
    net.heal(a.id)
    before = len(pushes(net))
    a.replicator.exchange_whole(b.id)
    net.settle(rounds=50)
    assert a.count() == 1
    assert len(pushes(net)) == before  # merged, not forwarded
    assert not pushes(net, sender=a.id)


def test_keys_travel_with_the_gossiped_slots() -> None:
    """A keyed write's Idempotency-Key goes with its slot, hop after hop."""
    net, nodes = gossiping(10)
    a = nodes[0]
    result_of(a.node.add_keyed("k-1", [("default", 1)]))
    net.settle(rounds=50)
    for push in pushes(net):
        assert "k-1" in push.body["keys"]


def test_wait_n_still_waits_for_n_peers() -> None:
    """?wait=N past the switch: the write goes to every peer that lacks it; N acknowledge it."""
    net, nodes = gossiping(10, fanout=2)
    a = nodes[0]
    d = net.request("POST", f"http://{a.id}/increment?wait=7")
    net.settle(rounds=50)
    response = result_of(d)
    body = json.loads(result_of(response.content()))
    assert response.code == 200
    assert body["replicated"] >= 7 and body["wait"] == 7
    assert len({p.to for p in pushes(net, sender=a.id)}) == 9  # every peer, not 2


def test_wait_all_times_out_as_before() -> None:
    net, nodes = gossiping(10, fanout=2)
    a = nodes[0]
    net.cut(nodes[9].id)
    d = net.request("POST", f"http://{a.id}/increment?wait=all")
    net.settle(rounds=50)
    net.advance(a.api.wait_timeout)
    response = result_of(d)
    body = json.loads(result_of(response.content()))
    assert response.code == 202
    assert body["replicated"] == 8 and body["wait"] == 9
