"""
Fuzzing a live node from its OpenAPI document with schemathesis: bounded
(a fixed number of cases per operation and mode), every answer checked.

No 5xx, no crash, every answer of the documented status and content type
and shape, and nothing changed by a refused request (its counters and peers
are read before and after each one).  The node has a cluster key, and the
fuzzer no token: so no generated /register, /sync or gossip can make the
node contact an address the fuzzer made up (the tests talk to loopback only).
"""

from __future__ import annotations

import collections
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.harness import Cluster

KEY = "fuzzing-key-0123456789"
CASES = 30  # per operation and mode: ~420 requests, 25-40 s on 2 busy cores


def test_fuzz_a_live_node(cluster: Cluster) -> None:
    # A lone node: a write with ?wait=N>0 waits out --wait-timeout, kept short.
    node = cluster.add(args=["--secret", KEY, "--max-counters", "50", "--wait-timeout", "0.05"])
    node.start().wait_up()
    schema = schemathesis.openapi.from_url(node.url + "/openapi.json")
    statuses: collections.Counter[int] = collections.Counter()
    by_operation: dict[str, collections.Counter[int]] = {}
    changed_by_refused: list[str] = []

    def state() -> Any:
        return node.get("/counters")[1]["counters"], node.get("/members")[1]["members"]

    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        seen = by_operation.setdefault(operation.label, collections.Counter())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=CASES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                before = state()
                response = case.call(base_url=node.url, timeout=10)
                statuses[response.status_code] += 1
                seen[response.status_code] += 1
                case.validate_response(
                    response,
                    checks=[not_a_server_error, status_code_conformance, content_type_conformance]
                    + ([response_schema_conformance] if response.status_code < 500 else []),
                )
                if response.status_code >= 400 and state() != before:
                    changed_by_refused.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}"
                    )

            try:
                run()
            except Unsatisfiable:
                # Nothing to break: an operation with no parameter or body
                # has no negative cases.
                assert mode is GenerationMode.NEGATIVE, operation.label

    total = sum(statuses.values())
    print(f"\nfuzzed {len(operations)} operations: {total} requests")
    print(f"status codes seen: {dict(sorted(statuses.items()))}")
    for label, counts in by_operation.items():
        print(f"  {label}: {dict(sorted(counts.items()))}")
    assert all(code < 500 for code in statuses), statuses
    assert changed_by_refused == []
    assert node.process is not None and node.process.poll() is None
    assert node.get("/health")[0] == 200
    assert "Traceback" not in node.log()
