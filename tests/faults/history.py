"""
A history of operations against a cluster, and Jepsen's counter checker.

Every operation is recorded as it is invoked and as it completes: what it was
(an increment C{by} some amount, or a read), on which node, when it started
and ended (C{time.monotonic()}, one clock for every process on the host, the
network namespaces included), and how it ended:

- C{ok}: acknowledged (HTTP 200); a read's value is the count it saw;
- C{fail}: certainly not applied (a 4xx, or the connection was refused, so
  the request was never sent);
- C{unknown}: maybe applied (a 503, a timeout, a connection cut mid-request,
  or a 202: a write with C{?wait} not confirmed by as many peers as asked).

The checker applies the counter rules of Jepsen's C{checker/counter}, as they
hold for dcounter's local reads (DESIGN.md): a read on a node is at least
the increments that node acknowledged before the read began (since its last
restart: a node restarted without its data, or from an old copy, reads
less until its peers catch it up) and at most every increment attempted,
anywhere, before the read ended; after healing, every node reads the
acknowledged total plus some subset of the unknown increments.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"


@dataclass
class Op:
    node: str
    f: str  #: "add" or "read"
    start: float
    end: float = 0.0
    type: str = ""  #: OK, FAIL or UNKNOWN once complete
    by: int = 0  #: for an add
    value: int | None = None  #: what a read saw, or the count an add answered
    status: int | None = None  #: the HTTP status, if there was an answer


def call(node: str, method: str, url: str, f: str, by: int = 1, timeout: float = 3.0) -> Op:
    """
    Make one request and classify how it ended.
    """
    op = Op(node, f, time.monotonic(), by=by if f == "add" else 0)
    data = json.dumps({"by": by}).encode() if f == "add" else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            op.status = response.status
            body = json.loads(response.read())
            # 202: a write with ?wait that fewer peers than asked held in
            # time.  It counts, but not with the guarantee asked for.
            op.type, op.value = (OK if response.status == 200 else UNKNOWN), int(body["count"])
    except urllib.error.HTTPError as e:
        op.status = e.code
        e.read()
        op.type = FAIL if 400 <= e.code < 500 else UNKNOWN
    except urllib.error.URLError as e:
        refused = isinstance(e.reason, ConnectionRefusedError)
        op.type = FAIL if refused else UNKNOWN
    except (TimeoutError, OSError, http.client.HTTPException, ValueError):
        op.type = UNKNOWN
    op.end = time.monotonic()
    return op


def increment(node: str, url: str, by: int = 1, timeout: float = 3.0, wait: str = "") -> Op:
    """An increment; with C{wait}, answered once that many peers hold it too (?wait=)."""
    return call(node, "POST", url + "/increment" + (f"?wait={wait}" if wait else ""), "add", by, timeout)


def read(node: str, url: str, timeout: float = 3.0) -> Op:
    return call(node, "GET", url + "/count", "read", timeout=timeout)


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    #: node -> times it was (re)started during the test
    starts: dict[str, list[float]] = field(default_factory=dict)

    def add(self, op: Op) -> Op:
        self.ops.append(op)
        return op

    def extend(self, ops: Iterable[Op]) -> None:
        self.ops.extend(ops)

    def started(self, node: str) -> None:
        """C{node} (re)starts now: reads there are bound only by its acks from here on."""
        self.starts.setdefault(node, []).append(time.monotonic())

    def load(self, path: Path) -> None:
        """Add the operations a load client wrote to C{path}, one JSON object a line."""
        for line in path.read_text().splitlines():
            if line.strip():
                self.ops.append(Op(**json.loads(line)))

    def adds(self, kind: str) -> list[Op]:
        return [op for op in self.ops if op.f == "add" and op.type == kind]

    def check(self, finals: dict[str, int]) -> Result:
        return check(self, finals)


@dataclass
class Result:
    operations: int
    acknowledged: int  #: sum of acknowledged increments
    unknown: int  #: sum of increments that may or may not have counted
    finals: dict[str, int]
    lost: int  #: the most any node reads below the acknowledged total
    over: int  #: the most any node reads above acknowledged + unknown
    bad_reads: list[Op]
    reads: int

    @property
    def valid(self) -> bool:
        return self.lost == 0 and self.over == 0 and not self.bad_reads

    def summary(self, name: str, converged: float) -> str:
        finals = " ".join(f"{node}={value}" for node, value in sorted(self.finals.items()))
        return (
            f"{name}: {self.operations} operations, {self.acknowledged} acknowledged, "
            f"{self.unknown} unknown, {self.reads} reads checked ({len(self.bad_reads)} out of bounds); "
            f"final reads {finals}; lost {self.lost}, over-counted {self.over}; "
            f"converged {converged:.2f}s after healing and the end of load"
        )

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["bad_reads"] = [asdict(op) for op in self.bad_reads[:10]]
        return out


def check(history: History, finals: dict[str, int]) -> Result:
    """
    Jepsen's counter rules (see the module docstring).
    """
    adds = [op for op in history.ops if op.f == "add"]
    acked = [op for op in adds if op.type == OK]
    maybe = [op for op in adds if op.type == UNKNOWN]
    acknowledged = sum(op.by for op in acked)
    unknown = sum(op.by for op in maybe)
    starts = sorted(op.start for op in adds if op.type in (OK, UNKNOWN))
    start_sums = list(accumulate(op.by for op in sorted(adds, key=lambda o: o.start) if op.type != FAIL))
    acked_by_end: dict[tuple[str, float], tuple[list[float], list[int]]] = {}

    def acked_before(node: str, since: float, t: float) -> int:
        """Increments acknowledged on C{node}, invoked after C{since}, complete before C{t}."""
        key = (node, since)
        if key not in acked_by_end:
            mine = sorted((op.end, op.by) for op in acked if op.node == node and op.start >= since)
            acked_by_end[key] = ([end for end, _ in mine], list(accumulate(by for _, by in mine)))
        ends, sums = acked_by_end[key]
        k = bisect_left(ends, t)
        return sums[k - 1] if k else 0

    bad: list[Op] = []
    reads = [op for op in history.ops if op.f == "read" and op.type == OK]
    for r in reads:
        since = max((t for t in history.starts.get(r.node, []) if t <= r.start), default=float("-inf"))
        lower = acked_before(r.node, since, r.start)
        k = bisect_left(starts, r.end)
        upper = start_sums[k - 1] if k else 0
        assert r.value is not None
        if not lower <= r.value <= upper:
            bad.append(r)
    # With increments of 1 every total from the acknowledged sum up to
    # acknowledged + unknown is a subset sum of the unknown ones.
    assert all(op.by == 1 for op in maybe), "the subset rule below assumes increments of 1"
    lost = max((acknowledged - v for v in finals.values()), default=0)
    over = max((v - acknowledged - unknown for v in finals.values()), default=0)
    return Result(
        operations=len(history.ops),
        acknowledged=acknowledged,
        unknown=unknown,
        finals=dict(finals),
        lost=max(lost, 0),
        over=max(over, 0),
        bad_reads=bad,
        reads=len(reads),
    )
