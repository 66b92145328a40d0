"""
GET /metrics: Prometheus text that prometheus_client's own parser reads, and
whose counters move with what the node does.  In-memory nodes on a Clock;
the store's commit metrics run its real writer thread (pytest-twisted).
"""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from dcounter.metrics import Metrics
from dcounter.store import SQLiteStore
from tests.support import ManualWorker, Network, TestNode, address, result_of

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


def scrape(net: Network, to: str = A) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    GET /metrics, parsed by prometheus_client: {(sample name, labels): value}.
    """
    d = net.request("GET", f"http://{to}/metrics")
    net.settle()
    response = result_of(d)
    assert response.code == 200
    assert response.headers.getRawHeaders("Content-Type")[0].startswith("text/plain; version=0.0.4")
    text = result_of(response.text())
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_parse_and_name_the_node_state(net: Network, a: TestNode) -> None:
    """Every family parses; names follow Prometheus conventions."""
    samples = scrape(net)
    names = {name for name, _ in samples}
    assert value(samples, "dcounter_build_info", version="0.1.0") == 1
    assert {
        "dcounter_uptime_seconds",
        "dcounter_probes_total",
        "dcounter_probe_duration_seconds_bucket",
        "dcounter_replication_pushes_total",
        "dcounter_anti_entropy_rounds_total",
        "dcounter_anti_entropy_bytes_total",
        "dcounter_store_commit_duration_seconds_count",
        "dcounter_store_commit_batch_size_count",
        "dcounter_peers",
        "dcounter_admissions_total",
    } <= names
    assert value(samples, "dcounter_peers", state="alive") == 0
    assert value(samples, "dcounter_probes_total", outcome="ok") == 0


def test_counters_move_with_increments_and_decrements(net: Network, a: TestNode, b: TestNode) -> None:
    net.mesh()
    a.increment(5)
    a.increment(2, name="hits")
    result_of(b.node.add("hits", -1))
    net.settle()
    samples = scrape(net, A)
    assert value(samples, "dcounter_increments_total", counter="default") == 5
    assert value(samples, "dcounter_local_increments_total", counter="default") == 5
    assert value(samples, "dcounter_counter_value", counter="hits") == 1
    assert value(samples, "dcounter_decrements_total", counter="hits") == 1
    assert value(samples, "dcounter_local_decrements_total", counter="hits") == 0  # b's, not a's
    assert value(samples, "dcounter_replication_pushes_total", outcome="ok") == 1
    (push,) = [s.body for s in net.requests("POST", "/sync", to=B)]
    assert value(samples, "dcounter_replication_push_bytes_total") == len(
        json.dumps(push, separators=(",", ":")).encode()
    )
    on_b = scrape(net, B)
    assert value(on_b, "dcounter_increments_total", counter="default") == 5  # replicated
    assert value(on_b, "dcounter_local_increments_total", counter="hits") == 0
    assert value(on_b, "dcounter_local_decrements_total", counter="hits") == 1


def test_probes_by_outcome_and_latency(net: Network, a: TestNode, b: TestNode) -> None:
    net.mesh()
    a.health.check_once()
    net.settle()
    samples = scrape(net)
    assert value(samples, "dcounter_probes_total", outcome="ok") == 1
    assert value(samples, "dcounter_probe_duration_seconds_count") == 1
    assert value(samples, "dcounter_peers", state="alive") == 1

    net.cut(B)
    a.health.check_once()
    net.settle()
    samples = scrape(net)
    assert value(samples, "dcounter_probes_total", outcome="failed") == 1
    assert value(samples, "dcounter_peers", state="suspect") == 1

    net.heal(B)
    net.hold(B)
    a.health.check_once()
    net.advance(2.0)  # the failure above doubled the timeout (Lifeguard's local health)
    samples = scrape(net)
    assert value(samples, "dcounter_probes_total", outcome="timeout") == 1
    assert value(samples, "dcounter_probe_duration_seconds_count") == 3
    # the timed-out probe took the client's whole deadline: past the 0.5 s bucket
    assert value(samples, "dcounter_probe_duration_seconds_bucket", le="0.5") == 2
    net.release(B)


def test_peer_state_changes_are_counted(net: Network, a: TestNode, b: TestNode) -> None:
    """Every suspicion is counted, even one refuted before the next scrape."""
    net.mesh()
    assert value(scrape(net), "dcounter_peer_state_changes_total", state="alive") == 1
    assert value(scrape(net), "dcounter_peer_state_changes_total", state="suspect") == 0
    net.cut(B)
    a.health.check_once()
    net.settle()
    net.heal(B)
    a.health.check_once()  # answered: alive again
    net.settle()
    samples = scrape(net)
    assert value(samples, "dcounter_peers", state="alive") == 1
    assert value(samples, "dcounter_peer_state_changes_total", state="suspect") == 1
    assert value(samples, "dcounter_peer_state_changes_total", state="alive") == 2
    assert value(samples, "dcounter_peer_state_changes_total", state="dead") == 0


def test_pushes_and_anti_entropy(net: Network, a: TestNode, b: TestNode) -> None:
    net.mesh()
    net.cut(B)
    a.increment()
    net.settle()
    assert value(scrape(net), "dcounter_replication_pushes_total", outcome="failed") == 1
    net.heal(B)
    a.replicator.anti_entropy()
    net.settle()
    samples = scrape(net)
    assert value(samples, "dcounter_anti_entropy_rounds_total", outcome="ok") >= 1
    assert value(samples, "dcounter_anti_entropy_bytes_total", direction="sent") > 50
    assert value(samples, "dcounter_anti_entropy_bytes_total", direction="received") > 50
    assert b.count() == 1


def test_admissions(net: Network, a: TestNode, b: TestNode) -> None:
    a.health.consider(B)
    a.health.consider(address(9009))  # nobody there
    net.settle()
    samples = scrape(net)
    assert value(samples, "dcounter_admissions_total", result="admitted") == 1
    assert value(samples, "dcounter_admissions_total", result="rejected") == 1


def test_each_node_has_its_own_registry(net: Network, a: TestNode, b: TestNode) -> None:
    """Many nodes in one process: no clash in prometheus_client's global registry."""
    assert a.api.metrics.registry is not b.api.metrics.registry
    a.increment()
    assert ("dcounter_increments_total", (("counter", "default"),)) not in scrape(net, B)


def test_store_commit_latency_and_batch_size(tmp_path) -> None:
    metrics = Metrics()
    clock = Clock()
    worker = ManualWorker()
    store = SQLiteStore(str(tmp_path), "10.0.0.1:8080", worker, clock=clock, metrics=metrics)
    store.start()
    saved = store.save({"default": {"r1": (1, 0), "r2": (2, 0)}})
    clock.advance(0.25)  # the commit takes this long
    worker.run_all()
    assert result_of(saved) is None
    assert result_of(store.stop()) is None
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(metrics.exposition().decode())
        for s in f.samples
    }
    assert value(samples, "dcounter_store_commit_duration_seconds_count") == 1
    assert value(samples, "dcounter_store_commit_batch_size_sum") == 2
    assert value(samples, "dcounter_store_commit_duration_seconds_sum") == 0.25
