"""
The SWIM protocol: its pure decisions (dcounter.swim on a Membership, time
passed in), then the protocol between nodes on one Clock, through the
in-memory network of tests.support: indirect probes, suspicion refuted by a
higher generation, death spread to nodes that never probed the dead one,
and what a stranger's rumors cannot do.
"""

from __future__ import annotations

import json
import math
from random import Random

import pytest

from dcounter import wire
from dcounter.membership import MAX_GENERATION, Membership, PeerState
from dcounter.swim import Swim
from dcounter.wire import Rumor
from tests.support import CLUSTER, Network, TestNode

ALIVE, SUSPECT, DEAD = PeerState.ALIVE, PeerState.SUSPECT, PeerState.DEAD
SELF = "10.0.0.1:8080"


def peer(i: int) -> str:
    return f"10.0.1.{i}:8080"


def swim_with(n_peers: int, **options) -> tuple[Swim, Membership]:
    m = Membership(SELF)
    for i in range(n_peers):
        m.heard_from(peer(i), 0.0, incarnation=f"boot{i}")
    return Swim(m, "me", rng=Random(1), **options), m


# The pure core.


@pytest.mark.parametrize("n", [2, 10, 100])
def test_one_probe_a_period_each_peer_once_a_pass(n: int) -> None:
    """Whatever the cluster's size, one target a period; each peer once in each pass."""
    swim, _ = swim_with(n)
    passes = [[t for _ in range(n) for t in swim.targets()] for _ in range(2)]
    for targets in passes:
        assert sorted(targets) == sorted(peer(i) for i in range(n))  # one each, one a period
    if n > 2:
        assert passes[0] != passes[1]  # shuffled again at each pass


def test_a_dead_peer_is_probed_too_one_a_period() -> None:
    """Dead peers are probed one a period besides the live one (so they can come back)."""
    swim, m = swim_with(3)
    m.mark(peer(0), DEAD, 1.0)
    m.mark(peer(1), DEAD, 1.0)
    seen = [swim.targets() for _ in range(4)]
    assert all(len(t) == 2 and t[0] == peer(2) for t in seen)
    assert sorted(t[1] for t in seen[:2]) == [peer(0), peer(1)]


def test_suspicion_timeout_scales_with_log_n() -> None:
    """min = mult * max(1, log10 n) * period; max = 6 min; no confirmations expected when n - 2 < mult - 2."""
    small, _ = swim_with(2, period=0.5, suspicion_mult=2.0)
    assert small.suspicion_timeouts() == (1.0, 6.0, 0)
    big, _ = swim_with(99, period=0.5, suspicion_mult=4.0)
    assert big.suspicion_timeouts() == (4.0, 24.0, 2)  # n = 100: log10 = 2


def test_confirmations_shorten_a_suspicion() -> None:
    """Lifeguard: each independent confirmation brings the deadline down, to min after k."""
    swim, m = swim_with(20, period=1.0, suspicion_mult=4.0)
    lo, hi, k = swim.suspicion_timeouts()
    assert k == 2
    target = peer(0)
    swim.received([Rumor("suspect", target, "boot0", 0, peer(1))], now=10.0)
    suspicion = swim.suspicion(target)
    assert suspicion is not None and suspicion.deadline() == pytest.approx(10.0 + hi)
    swim.received([Rumor("suspect", target, "boot0", 0, peer(1))], now=11.0)  # the same source again
    assert suspicion.deadline() == pytest.approx(10.0 + hi)
    swim.received([Rumor("suspect", target, "boot0", 0, peer(2))], now=11.0)
    one = hi - math.log(2) / math.log(3) * (hi - lo)
    assert suspicion.deadline() == pytest.approx(10.0 + one)
    swim.received([Rumor("suspect", target, "boot0", 0, peer(3))], now=12.0)
    assert suspicion.deadline() == pytest.approx(10.0 + lo)
    assert swim.tick(10.0 + lo - 0.01) == []
    assert m.get(target).state is SUSPECT
    assert swim.tick(10.0 + lo) == [target]
    assert m.get(target).state is DEAD


def test_a_suspect_peer_is_alive_again_at_a_higher_generation() -> None:
    """An alive rumor at a higher generation ends the suspicion; the old suspicion then counts for nothing."""
    swim, m = swim_with(3)
    target = peer(0)
    swim.unreachable(target, 1.0, asked=2, nacks=2)
    assert m.get(target).state is SUSPECT
    swim.received([Rumor("alive", target, "boot0", 1, target)], now=1.5)
    assert (m.get(target).state, m.get(target).generation) == (ALIVE, 1)
    assert swim.suspicion(target) is None
    swim.received([Rumor("suspect", target, "boot0", 0, peer(1))], now=2.0)  # stale
    swim.received([Rumor("dead", target, "boot0", 0, peer(1))], now=2.0)  # stale
    assert m.get(target).state is ALIVE
    assert swim.tick(100.0) == []


def test_a_node_refutes_what_is_said_of_its_boot() -> None:
    """Suspect or dead at our generation: we raise it and spread that we are alive."""
    swim, m = swim_with(3)
    swim.received([Rumor("suspect", SELF, "me", 0, peer(1))], now=1.0)
    assert swim.generation == 1
    assert Rumor("alive", SELF, "me", 1, SELF) in swim.rumors()
    swim.received([Rumor("dead", SELF, "me", 0, peer(1))], now=1.0)  # older: refuted already
    assert swim.generation == 1
    swim.received([Rumor("dead", SELF, "me", 1, peer(1))], now=1.0)
    assert swim.generation == 2
    swim.received([Rumor("dead", SELF, "an-old-boot", 7, peer(1))], now=1.0)  # not this boot
    assert swim.generation == 2
    assert SELF not in m


def test_rumors_of_unknown_nodes_or_other_boots_change_nothing() -> None:
    """Gossip neither admits nor kills a node it does not know as it is."""
    swim, m = swim_with(2)
    swim.received([Rumor("dead", peer(0), "another-boot", 5, peer(1))], now=1.0)
    swim.received([Rumor("alive", peer(9), "x", 0, peer(1)), Rumor("dead", peer(8), "x", 0, peer(1))], 1.0)
    assert m.get(peer(0)).state is ALIVE
    assert peer(9) not in m and peer(8) not in m


def test_each_rumor_is_sent_a_bounded_number_of_times() -> None:
    """retransmit_mult * ceil(log10(n + 1)) times, then dropped."""
    swim, _ = swim_with(3, retransmit_mult=2)  # n = 4: 2 * 1
    swim.unreachable(peer(0), 1.0, asked=0, nacks=0)
    assert swim.news()
    assert [r.kind for r in swim.rumors()] == ["suspect"]
    assert not swim.news()
    assert len(swim.rumors()) == 1
    assert swim.rumors() == ()


def test_only_what_a_node_saw_itself_is_news() -> None:
    """
    A rumor heard from another member travels on the messages already sent;
    only what this node found itself is worth a message of its own (else
    every event would cost each of the N nodes a message).
    """
    swim, m = swim_with(3)
    swim.received([Rumor("suspect", peer(0), "boot0", 0, peer(1))], now=1.0)
    swim.received([Rumor("dead", peer(2), "boot2", 0, peer(1))], now=1.0)
    assert (m.get(peer(0)).state, m.get(peer(2)).state) == (SUSPECT, DEAD)
    assert not swim.news()
    assert sorted(r.kind for r in swim.rumors()) == ["dead", "suspect"]  # still passed on
    swim.unreachable(peer(1), 1.0, asked=0, nacks=0)
    assert swim.news()
    assert [r.node for r in swim.rumors() if r.kind == "suspect" and r.source == SELF] == [peer(1)]
    assert not swim.news()
    swim.tick(100.0)  # both suspicions run out here: this node's own finding
    assert swim.news()


def test_a_death_is_news_only_where_its_suspicion_was_found() -> None:
    """
    Every node's own timer ends a suspicion it heard of; only the nodes
    whose probe found it gossip the death at once (else each death cost 3N
    messages).
    """
    swim, m = swim_with(3)
    swim.received([Rumor("suspect", peer(0), "boot0", 0, peer(1))], now=1.0)
    swim.rumors()
    swim.tick(100.0)
    assert m.get(peer(0)).state is DEAD
    assert not swim.news()
    swim.unreachable(peer(2), 100.0, asked=0, nacks=0)
    swim.rumors()
    swim.tick(200.0)
    assert m.get(peer(2)).state is DEAD
    assert swim.news()


def test_local_health_scales_the_probe_timeout() -> None:
    """Lifeguard: helpers that send no nack raise awareness (and the timeout); answers lower it."""
    swim, _ = swim_with(5, probe_timeout=0.5)
    swim.unreachable(peer(0), 1.0, asked=3, nacks=3)  # every helper answered: not our fault
    assert swim.awareness == 0
    swim.unreachable(peer(1), 1.0, asked=3, nacks=1)  # two said nothing: we may be the slow one
    assert (swim.awareness, swim.probe_timeout()) == (2, 1.5)
    swim.answered(peer(2), 2.0, "boot2", 0)
    assert swim.awareness == 1


# Between nodes, on one Clock.


@pytest.fixture
def net() -> Network:
    return Network()


def _start(*nodes: TestNode) -> None:
    for node in nodes:
        node.start_health()


def _stop(*nodes: TestNode) -> None:
    for node in nodes:
        node.stop_health()


def test_indirect_probe_keeps_a_peer_this_node_cannot_reach(net: Network) -> None:
    """
    A cannot reach C, but B can: A's probes of C go through B (POST /probe)
    and come back acked, so C is never suspected.
    """
    a, b, c = net.add_many(3)
    net.mesh()
    net.cut_link(a.id, c.id)
    events: list[tuple[str, object, object]] = []
    a.membership.subscribe(lambda *e: events.append(e))
    _start(a)
    net.advance(10.0)
    asked = [s for s in net.requests("POST", "/probe") if s.sender == a.id]
    assert asked and all(s.to == b.id and s.body["target"] == c.id for s in asked)
    assert len(net.requests("GET", "/health", to=c.id)) >= len(asked)  # B probed C each time
    assert a.membership.get(c.id).state is ALIVE
    assert events == []
    registry = a.health.metrics.registry
    indirect_ok = registry.get_sample_value("dcounter_probes_total", {"outcome": "indirect_ok"})
    assert indirect_ok == len(asked)
    assert registry.get_sample_value("dcounter_probes_total", {"outcome": "indirect_failed"}) == 0
    _stop(a)


def test_indirect_probe_nack_then_suspect_then_dead(net: Network) -> None:
    """C down for all: B answers A's indirect probe with a nack; A suspects C, then declares it dead."""
    a, b, c = net.add_many(3)
    net.mesh()
    net.cut(c.id)
    _start(a)
    net.advance(2.0)
    answers = [s for s in net.requests("POST", "/probe") if s.sender == a.id]
    assert answers
    assert a.membership.get(c.id).state is SUSPECT
    assert a.health.swim.awareness == 0  # B's nack: A is not the slow one
    registry = a.health.metrics.registry
    assert registry.get_sample_value("dcounter_probes_total", {"outcome": "indirect_failed"}) >= 1
    net.advance(2.0)
    assert a.membership.get(c.id).state is DEAD
    assert net.call("GET", a.id, "/peers").json == [b.id]
    _stop(a)


def test_suspicion_refuted_by_a_higher_generation(net: Network) -> None:
    """
    C is slow (its answers held) long enough for A and B to suspect it;
    C hears the suspicion in the answers to its own probes, raises its
    generation and gossips it: A and B take it alive again, and it never
    dies.
    """
    a, b, c = net.add_many(3)
    net.mesh()
    events: list[tuple[str, object, object]] = []
    a.membership.subscribe(lambda *e: events.append(e))
    b.membership.subscribe(lambda *e: events.append(e))
    net.hold(c.id)
    _start(a, b, c)
    a.replicator.startService()
    b.replicator.startService()
    for _ in range(40):
        net.advance(0.25)
        if a.membership.get(c.id).state is SUSPECT:
            break
    assert a.membership.get(c.id).state is SUSPECT
    net.release(c.id)
    c_gossip = c.replicator
    for _ in range(8):  # C's own probes bring it the rumor; its gossip carries its answer
        net.advance(0.25)
        c_gossip.gossip()
    assert c.health.swim.generation >= 1
    for node in (a, b):
        member = node.membership.get(c.id)
        assert (member.state, member.generation) == (ALIVE, c.health.swim.generation)
    assert (c.id, SUSPECT, DEAD) not in events
    net.advance(20.0)
    assert (c.id, SUSPECT, DEAD) not in events
    _stop(a, b, c)
    a.replicator.stopService()
    b.replicator.stopService()


def test_death_spreads_to_nodes_that_never_probed_the_dead_one(net: Network) -> None:
    """
    Only A probes, and asks no one else to (no indirect probes).  D dies; A
    declares it dead and gossips it (an empty push carrying the rumor) to B
    and C, which never sent D anything, and drop it from /peers.
    """
    a = net.add(9001, indirect=0)
    b, c, d = net.add_many(3, first_port=9002)
    net.mesh()
    meshed = len(net.sent)  # what admission did before: not the protocol's
    net.cut(d.id)
    _start(a)
    for _ in range(40):
        net.advance(0.25)
        a.replicator.gossip()
        if a.membership.get(d.id).state is DEAD:
            break
    assert a.membership.get(d.id).state is DEAD
    a.replicator.gossip()
    net.settle()
    for node in (b, c):
        assert node.membership.get(d.id).state is DEAD
        assert d.id not in net.call("GET", node.id, "/peers").json
        assert [s for s in net.sent[meshed:] if s.sender == node.id and s.to == d.id] == []
    _stop(a)


def test_death_spreads_in_the_answer_to_a_probe(net: Network) -> None:
    """
    A declares D dead; B, whose first probe (in its seeded order) is of A,
    learns it from A's answer (piggybacked on GET /health) and never
    probes D.
    """
    a = net.add(9001, indirect=0)
    b, d = net.add_many(2, first_port=9002)
    net.mesh()
    meshed = len(net.sent)  # what admission did before: not the protocol's
    net.cut(d.id)
    _start(a)
    net.advance(4.0)
    assert a.membership.get(d.id).state is DEAD
    b.health.check_once()
    net.settle()
    assert [s.to for s in net.sent[meshed:] if s.sender == b.id] == [a.id]
    assert b.membership.get(d.id).state is DEAD
    b.health.check_once()  # D is dead: B's live turn has only A; D in the dead turn
    net.settle()
    assert [s.to for s in net.sent[meshed:] if s.sender == b.id] == [a.id, a.id, d.id]
    _stop(a)


# What strangers cannot do.


def test_a_strangers_sync_cannot_declare_a_member_dead(net: Network) -> None:
    """Without a key, a /sync from a non-member saying B is dead is refused (403); B stays."""
    a, b = net.add_many(2)
    net.mesh()
    incarnation = b.node.identity.incarnation
    body = {
        "from": "127.0.0.1:9666",
        "incarnation": "x",
        "cluster": "dcounter",
        "state": {},
        "rumors": [
            {
                "kind": "dead",
                "node": b.id,
                "incarnation": incarnation,
                "generation": 0,
                "source": "127.0.0.1:9666",
            }
        ],
    }
    reply = net.call("POST", a.id, "/sync", json=body)
    assert reply.code == 403
    assert a.membership.get(b.id).state is ALIVE


def test_a_strangers_indirect_probe_is_refused(net: Network) -> None:
    """
    Without a key, POST /probe from a non-member is a 403, its rumors
    ignored; with a key, unsigned, a 401.
    """
    a, b = net.add_many(2)
    net.mesh()
    rumor = {"kind": "dead", "node": b.id, "incarnation": b.node.identity.incarnation, "generation": 0}
    body = {"from": "127.0.0.1:9666", "target": b.id, "rumors": [rumor | {"source": "127.0.0.1:9666"}]}
    assert net.call("POST", a.id, "/probe", json=body).code == 403
    assert a.membership.get(b.id).state is ALIVE
    keyed = Network()
    k, _ = keyed.add_many(2, keys=["k" * 32])
    keyed.mesh()
    assert keyed.call("POST", k.id, "/probe", json=body).code == 401


def test_a_malformed_indirect_probe_is_a_400(net: Network) -> None:
    a, b = net.add_many(2)
    net.mesh()
    for body in (
        {"from": b.id},
        {"from": b.id, "target": "nope"},
        {"from": b.id, "target": a.id, "rumors": [1]},
    ):
        reply = net.call("POST", a.id, "/probe", json=body)
        assert reply.code == 400 and "error" in reply.json


def test_generations_stop_at_the_bound_peers_decode() -> None:
    """
    A rumor at the highest generation a peer decodes is refuted at it, not
    past it: 2**63 had made every /health answer of the node undecodable,
    and its peers declared it dead.  More is refused on the wire.
    """
    swim, _ = swim_with(3)
    swim.received([Rumor("suspect", SELF, "me", MAX_GENERATION, peer(1))], now=1.0)
    assert swim.generation == MAX_GENERATION
    hello = wire.Hello(SELF, "me", CLUSTER, generation=swim.generation)
    assert wire.decode_hello(json.dumps(wire.encode_hello(hello)).encode()).generation == MAX_GENERATION
    rumor = {
        "kind": "suspect",
        "node": SELF,
        "incarnation": "me",
        "generation": MAX_GENERATION + 1,
        "source": peer(1),
    }
    with pytest.raises(wire.MalformedMessage):
        sync = {"from": peer(1), "incarnation": "boot1", "cluster": CLUSTER, "state": {}, "rumors": [rumor]}
        wire.decode_sync(json.dumps(sync).encode())


def test_a_revived_peer_stays_within_the_bound() -> None:
    """Heard from after a suspicion, a peer at the highest generation stays at it."""
    m = Membership(SELF)
    m.heard_from(peer(1), 0.0, incarnation="i1", generation=MAX_GENERATION)
    m.mark(peer(1), SUSPECT, 1.0)
    m.heard_from(peer(1), 2.0, incarnation="i1")
    assert m.get(peer(1)).generation == MAX_GENERATION
