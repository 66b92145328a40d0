# -*- test-case-name: tests.test_metrics -*-
"""
Every Prometheus metric a node exposes on GET /metrics, in one place.

Two kinds:

  - events, recorded as they happen by the part that sees them, through the
    small methods of L{Metrics} (a probe answered, a sync sent, a commit
    made): counters and histograms;
  - state the parts keep anyway (counter slots, the peer table, admission
    and datagram counts), read at scrape time by L{StateCollector}, so the
    hot paths (increments, merges, datagrams) pay nothing for metrics.

Each node has its own C{CollectorRegistry}, never prometheus_client's
global one: unit tests run many in-memory nodes in one process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from dcounter import __version__

__all__ = ["CONTENT_TYPE", "Metrics", "StateCollector"]

#: The classic text format, which every Prometheus version reads (the body
#: generate_latest writes for our names is the same in format 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Probe and commit latencies: from a loopback answer to a probe's timeout.
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)
#: Slots per commit: one for a lone increment, many under load.
_BATCH = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


def sync_size(body: dict[str, Any]) -> int:
    """
    The size of a sync body as treq sends it (compact JSON).
    """
    return len(json.dumps(body, separators=(",", ":")).encode())


class Metrics:
    """
    A node's registry, and the events its parts record into it.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.probes = Counter(
            "dcounter_probes", "Health probes of peers, by outcome.", ["outcome"], registry=r
        )
        self.probe_seconds = Histogram(
            "dcounter_probe_duration_seconds",
            "Time from a probe's start to its answer or failure.",
            buckets=_SECONDS,
            registry=r,
        )
        self.pushes = Counter(
            "dcounter_replication_pushes", "Replication pushes to peers, by outcome.", ["outcome"], registry=r
        )
        self.push_bytes = Counter(
            "dcounter_replication_push_bytes", "Bytes of the bodies of pushes sent to peers.", registry=r
        )
        self.anti_entropy = Counter(
            "dcounter_anti_entropy_rounds",
            "Anti-entropy push-pulls with a peer, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.anti_entropy_bytes = Counter(
            "dcounter_anti_entropy_bytes",
            "Bytes of anti-entropy sync bodies sent to peers and received from them.",
            ["direction"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "dcounter_store_commit_duration_seconds",
            "Time to commit one group of writes to the data directory.",
            buckets=_SECONDS,
            registry=r,
        )
        self.commit_batch = Histogram(
            "dcounter_store_commit_batch_size",
            "Counter slots written per commit.",
            buckets=_BATCH,
            registry=r,
        )
        self.peer_changes = Counter(
            "dcounter_peer_state_changes",
            "Peers that entered a state in this node's table (alive, suspect, dead).",
            ["state"],
            registry=r,
        )
        for state in ("alive", "suspect", "dead"):
            self.peer_changes.labels(state)
        for outcome in ("ok", "failed", "timeout", "wrong_node", "indirect_ok", "indirect_failed"):
            self.probes.labels(outcome)
        for outcome in ("ok", "failed"):
            self.pushes.labels(outcome)
            self.anti_entropy.labels(outcome)
        for direction in ("sent", "received"):
            self.anti_entropy_bytes.labels(direction)

    def probe(self, outcome: str, seconds: float) -> None:
        """
        A probe of a peer ended: C{ok}, C{wrong_node} (answered as another
        node or cluster), C{timeout} or C{failed}; or, after a direct probe
        failed, the indirect probes through others: C{indirect_ok} (one of
        them reached it) or C{indirect_failed}.
        """
        self.probes.labels(outcome).inc()
        self.probe_seconds.observe(seconds)

    def push(self, ok: bool, sent: int = 0) -> None:
        self.pushes.labels("ok" if ok else "failed").inc()
        self.push_bytes.inc(sent)

    def exchange(self, ok: bool, sent: int, received: int) -> None:
        """
        An anti-entropy push-pull ended, with the bytes of both bodies.
        """
        self.anti_entropy.labels("ok" if ok else "failed").inc()
        self.anti_entropy_bytes.labels("sent").inc(sent)
        self.anti_entropy_bytes.labels("received").inc(received)

    def commit(self, seconds: float, slots: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_batch.observe(slots)

    def watch(
        self, node: Any, membership: Any, health: Any, discovery: Any = None, guard: Any = None
    ) -> None:
        """
        Expose the state these parts keep, read at each scrape; count the
        peers' changes of state as they happen.
        """
        self.registry.register(StateCollector(node, membership, health, discovery, guard))
        membership.subscribe(self.peer_changed)

    def peer_changed(self, peer: str, old: Any, new: Any) -> None:
        """
        A peer entered state C{new} (a L{dcounter.membership.PeerState}, or
        None when forgotten or removed: not counted).
        """
        if new is not None:
            self.peer_changes.labels(new.value).inc()

    def exposition(self) -> bytes:
        """
        The Prometheus text format of everything in this registry.
        """
        return generate_latest(self.registry)


class StateCollector(Collector):
    """
    Metrics read from the parts' own state at scrape time.
    """

    def __init__(
        self, node: Any, membership: Any, health: Any, discovery: Any = None, guard: Any = None
    ) -> None:
        self.node = node
        self.membership = membership
        self.health = health
        self.discovery = discovery
        self.guard = guard

    def describe(self) -> list[Metric]:
        return []  # dynamic labels: describe nothing, so registering does not collect

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("dcounter_build", "dcounter's version.")
        info.add_metric([], {"version": __version__})
        yield info
        yield GaugeMetricFamily(
            "dcounter_uptime_seconds", "Seconds since this node started.", self.node.uptime()
        )

        # Counters: P and N totals are grow-only per replica, so their sums
        # are Prometheus counters; the value is a gauge.
        value = GaugeMetricFamily(
            "dcounter_counter_value", "Each counter's value on this node.", labels=["counter"]
        )
        incs = CounterMetricFamily(
            "dcounter_increments",
            "Increments of each counter, on every replica as this node knows them.",
            labels=["counter"],
        )
        decs = CounterMetricFamily(
            "dcounter_decrements",
            "Decrements of each counter, on every replica as this node knows them.",
            labels=["counter"],
        )
        local_incs = CounterMetricFamily(
            "dcounter_local_increments",
            "Increments of each counter accepted by this replica (this node since its data was new).",
            labels=["counter"],
        )
        local_decs = CounterMetricFamily(
            "dcounter_local_decrements",
            "Decrements of each counter accepted by this replica.",
            labels=["counter"],
        )
        replica = self.node.replica
        state = self.node.counters.state()
        yield GaugeMetricFamily(
            "dcounter_slots",
            "Slots in this node's state (one per counter and replica): restarts add some, folds remove them.",
            sum(len(slots) for slots in state.values()),
        )
        yield GaugeMetricFamily(
            "dcounter_fold_pending",
            "1 while slots of this node's earlier incarnations wait to be folded.",
            int(self.node.fold_pending),
        )
        for name, slots in sorted(state.items()):
            p = sum(slot[0] for slot in slots.values())
            n = sum(slot[1] for slot in slots.values())
            own = slots.get(replica, (0, 0))
            value.add_metric([name], self.node.value(name))  # as served: within int64
            incs.add_metric([name], p)
            decs.add_metric([name], n)
            local_incs.add_metric([name], own[0])
            local_decs.add_metric([name], own[1])
        yield from (value, incs, decs, local_incs, local_decs)

        peers = GaugeMetricFamily(
            "dcounter_peers", "Peers in the membership table, by state.", labels=["state"]
        )
        for state, count in sorted(self.membership.counts().items()):
            peers.add_metric([state], count)
        yield peers

        admissions = CounterMetricFamily(
            "dcounter_admissions",
            "Would-be peers probed for admission (admitted, rejected), or dropped unprobed.",
            labels=["result"],
        )
        for result, count in sorted(self.health.admissions.items()):
            admissions.add_metric([result], count)
        yield admissions

        if self.discovery is not None:
            stats = self.discovery.stats
            yield CounterMetricFamily(
                "dcounter_datagrams_received", "Discovery datagrams received.", stats["received"]
            )
            yield CounterMetricFamily(
                "dcounter_announcements_sent",
                "Discovery datagrams sent (announcements and replies).",
                stats["sent"],
            )
            dropped = CounterMetricFamily(
                "dcounter_datagrams_dropped", "Discovery datagrams dropped, by reason.", labels=["reason"]
            )
            dropped.add_metric(["malformed"], stats["malformed"])
            dropped.add_metric(["other_cluster"], stats["other_cluster"])
            yield dropped

        if self.guard is not None:
            accepted = CounterMetricFamily(
                "dcounter_auth_accepted",
                "Signed node-to-node messages accepted, by channel (udp, http).",
                labels=["channel"],
            )
            refused = CounterMetricFamily(
                "dcounter_auth_dropped",
                "Node-to-node messages dropped by the keyring, by channel and reason.",
                labels=["channel", "reason"],
            )
            for channel, count in sorted(self.guard.accepted.items()):
                accepted.add_metric([channel], count)
                for reason, n in sorted(self.guard.dropped[channel].items()):
                    refused.add_metric([channel, reason], n)
            yield from (accepted, refused)
