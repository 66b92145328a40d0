#!/usr/bin/env python3
"""
The checks behind `make test-*`: each shows what the original's target showed
and then checks it, exiting 1 with one line on stderr when the cluster is wrong.

    python3 scripts/check_cluster.py [--nodes URL,URL,...] CHECK [--extra URL]

CHECK is one of: wait, health, all-peers, count, increment, retry, sync, peers,
remove-existing-peer, discovery (needs --extra, the URL of a node started for
it).  Nodes default to $DCOUNTER_NODES, else 127.0.0.1:9088, 9089 and 9090.

Standard library only, so it runs with any python3 against any cluster: the
local one, the compose one, or one elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

DEFAULT_NODES = "http://127.0.0.1:9088,http://127.0.0.1:9089,http://127.0.0.1:9090"


class CheckFailed(Exception):
    """The cluster is not as it should be; the message says how, in one line."""


def call(method: str, url: str, body: object = None, timeout: float = 3.0) -> tuple[int, Any]:
    """
    One HTTP request with a JSON body; (status, decoded JSON answer).  A
    node that does not answer, or answers something that is not JSON, is a
    L{CheckFailed}.
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except urllib.error.URLError as e:
        raise CheckFailed(f"{method} {url}: no answer ({e.reason})") from None
    except OSError as e:  # a timeout, a reset
        raise CheckFailed(f"{method} {url}: no answer ({e})") from None
    try:
        return status, json.loads(raw)
    except ValueError:
        raise CheckFailed(
            f"{method} {url}: answered {status} with something that is not JSON: {raw[:80]!r}"
        ) from None


def keyed_post(url: str, key: str, timeout: float = 3.0) -> tuple[int, Any, bool]:
    """
    POST with an C{Idempotency-Key}: (status, decoded JSON answer, whether
    the node said it was a replay).
    """
    request = urllib.request.Request(url, data=b"", method="POST", headers={"Idempotency-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), e.headers
    except (urllib.error.URLError, OSError) as e:
        raise CheckFailed(f"POST {url}: no answer ({getattr(e, 'reason', e)})") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        raise CheckFailed(
            f"POST {url}: answered {status} with something that is not JSON: {raw[:80]!r}"
        ) from None
    return status, answer, headers.get("Idempotent-Replayed") == "true"


def expect(method: str, url: str, body: object = None, status: int = 200) -> Any:
    got, answer = call(method, url, body)
    if got != status:
        raise CheckFailed(f"{method} {url} answered {got}, not {status}: {json.dumps(answer)}")
    return answer


def wait_until(condition: Callable[[], tuple[bool, str]], timeout: float, what: str) -> str:
    """
    Poll C{condition} (which returns whether it holds and what it saw) until
    it holds; return what it saw.  After C{timeout} seconds it is a failure
    naming C{what} and the last thing seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            ok, seen = condition()
        except CheckFailed as e:
            ok, seen = False, str(e)
        if ok:
            return seen
        if time.monotonic() >= deadline:
            raise CheckFailed(f"{what} after {timeout:g}s: {seen}")
        time.sleep(0.1)


def show(label: str, answer: object) -> None:
    print(f"  {label}: {json.dumps(answer, sort_keys=True)}")


class Cluster:
    def __init__(self, urls: list[str], timeout: float) -> None:
        if not urls:
            raise CheckFailed("no nodes given (--nodes or $DCOUNTER_NODES)")
        self.urls = urls
        self.timeout = timeout

    def ids(self, urls: list[str] | None = None) -> dict[str, str]:
        """Each node's id by URL, from a healthy /health."""
        ids = {}
        for url in urls or self.urls:
            health = expect("GET", url + "/health")
            if health.get("status") != "ok" or not health.get("node_id"):
                raise CheckFailed(f"{url}/health is not ok: {json.dumps(health)}")
            ids[url] = health["node_id"]
        return ids

    def peers(self, url: str) -> set[str]:
        answer = expect("GET", url + "/peers")
        if not isinstance(answer, list):
            raise CheckFailed(f"{url}/peers is not a list: {json.dumps(answer)}")
        return set(answer)

    def counts(self) -> dict[str, int]:
        return {url: int(expect("GET", url + "/count")["count"]) for url in self.urls}

    def meshed(self, ids: dict[str, str]) -> tuple[bool, str]:
        """Whether every node lists every other; else the first that does not."""
        for url, node_id in ids.items():
            peers = self.peers(url)
            missing = sorted(other for other in ids.values() if other != node_id and other not in peers)
            if missing:
                return False, f"{node_id} does not list {', '.join(missing)} (its peers: {sorted(peers)})"
        return True, ""

    def converged(self, at_least: int) -> Callable[[], tuple[bool, str]]:
        def check() -> tuple[bool, str]:
            counts = self.counts()
            seen = ", ".join(f"{url}={n}" for url, n in counts.items())
            return len(set(counts.values())) == 1 and min(counts.values()) >= at_least, seen

        return check

    # The checks, one per make target.

    def wait(self) -> str:
        """Every node answers and lists every other (after a start)."""
        ids = wait_until(
            lambda: (True, json.dumps(self.ids())), self.timeout, "nodes did not all answer /health"
        )
        wait_until(lambda: self.meshed(json.loads(ids)), self.timeout, "nodes did not find each other")
        return f"{len(self.urls)} nodes up and meshed"

    def health(self) -> str:
        clusters = {}
        for url in self.urls:
            health = expect("GET", url + "/health")
            show(url, health)
            if health.get("status") != "ok":
                raise CheckFailed(f"{url}/health says status {health.get('status')!r}, not 'ok'")
            clusters[url] = health.get("cluster")
        if len(set(clusters.values())) > 1:
            raise CheckFailed(f"nodes are in different clusters: {clusters}")
        return f"{len(self.urls)} nodes healthy"

    def all_peers(self) -> str:
        ids = self.ids()
        for url in self.urls:
            show(f"{url} ({ids[url]}) peers", sorted(self.peers(url)))
        wait_until(lambda: self.meshed(ids), self.timeout, "not every node lists every other")
        return f"each of {len(ids)} nodes lists the other {len(ids) - 1}"

    def count(self) -> str:
        seen = wait_until(self.converged(0), self.timeout, "counts differ")
        for url, n in self.counts().items():
            show(url, {"count": n})
        return f"all {len(self.urls)} nodes count {seen.split('=')[-1]}"

    def increment(self) -> str:
        before = int(
            wait_until(self.converged(0), self.timeout, "counts differ before incrementing").split("=")[-1]
        )
        for url in self.urls:
            show(f"POST {url}/increment", expect("POST", url + "/increment"))
        target = before + len(self.urls)
        wait_until(self.converged(target), self.timeout, f"nodes did not all reach {target}")
        return f"one increment on each node: every node went from {before} to {target}"

    def retry(self, hold: float = 2.0) -> str:
        """
        One increment sent twice to every node under one Idempotency-Key (a
        client retrying on every node) counts once, everywhere.
        """
        before = int(
            wait_until(self.converged(0), self.timeout, "counts differ before the retried write").split("=")[
                -1
            ]
        )
        key = f"make-test-retry-{os.getpid()}-{time.time_ns()}"
        sends = 0
        for _ in range(2):
            for url in self.urls:
                status, answer, replayed = keyed_post(url + "/increment", key)
                sends += 1
                show(f"POST {url}/increment (Idempotency-Key {key}) -> {status}, replayed {replayed}", answer)
                if status != 200:
                    raise CheckFailed(f"{url} answered {status} to a retried write: {json.dumps(answer)}")
        target = before + 1
        wait_until(self.converged(target), self.timeout, f"nodes did not all reach {target}")
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            counts = self.counts()
            if any(n != target for n in counts.values()):
                raise CheckFailed(
                    f"a write sent {sends} times under one key did not stay counted once: {counts}"
                )
            time.sleep(0.1)
        return (
            f"one increment sent {sends} times under one Idempotency-Key: "
            f"every node went from {before} to {target}"
        )

    def sync(self) -> str:
        before = int(
            wait_until(self.converged(0), self.timeout, "counts differ before syncing").split("=")[-1]
        )
        target = before + 10
        url = self.urls[-1]
        show(f"POST {url}/sync {{count: {target}}}", expect("POST", url + "/sync", {"count": target}))
        wait_until(self.converged(target), self.timeout, f"nodes did not all reach the synced {target}")
        return f"a sync to {target} on one node reached every node"

    def peers_registration(self) -> str:
        ids = self.ids()
        urls = self.urls
        for i, url in enumerate(urls):
            other = ids[urls[(i + 1) % len(urls)]]
            if other == ids[url]:
                continue
            answer = expect("POST", url + "/register", {"id": other})
            show(f"POST {url}/register {other}", answer)
            if answer.get("status") != "registered":
                raise CheckFailed(f"{url} did not register {other}: {json.dumps(answer)}")
            if other not in self.peers(url):
                raise CheckFailed(f"{url} registered {other} but does not list it in /peers")
        before = self.peers(urls[0])
        status, answer = call("POST", urls[0] + "/register", {"id": "not a peer"})
        show(f"POST {urls[0]}/register 'not a peer' -> {status}", answer)
        if status != 400 or "error" not in answer:
            raise CheckFailed(
                f"{urls[0]} answered {status} to a malformed registration, not 400 with an error"
            )
        if self.peers(urls[0]) - before:
            raise CheckFailed(f"{urls[0]} took a malformed registration as a peer")
        return f"{len(urls)} registrations accepted, a malformed one refused with 400"

    def remove_existing_peer(self, hold: float = 3.0) -> str:
        if len(self.urls) < 2:
            raise CheckFailed("needs two nodes")
        ids = self.ids()
        url, other = self.urls[0], ids[self.urls[1]]
        wait_until(
            lambda: (other in self.peers(url), str(sorted(self.peers(url)))),
            self.timeout,
            f"{url} never listed {other}",
        )
        show(f"POST {url}/remove-peer {other}", expect("POST", url + "/remove-peer", {"id": other}))

        # Gone, and kept out by the quarantine through discovery and gossip rounds.
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            peers = self.peers(url)
            if other in peers:
                raise CheckFailed(
                    f"{url} lists {other} again within {hold:g}s of removing it: {sorted(peers)}"
                )
            time.sleep(0.1)
        show(f"{url} peers after {hold:g}s", sorted(self.peers(url)))

        show(f"POST {url}/register {other}", expect("POST", url + "/register", {"id": other}))
        wait_until(
            lambda: (other in self.peers(url), str(sorted(self.peers(url)))),
            self.timeout,
            f"{url} did not list {other} again once re-registered",
        )
        show(f"{url} peers", sorted(self.peers(url)))
        return f"{other} left {url}'s peers, stayed out {hold:g}s, and came back when registered"

    def discovery(self, extra: str | None) -> str:
        if not extra:
            raise CheckFailed("discovery needs --extra URL, a node started for the check")
        started = time.monotonic()
        ids = self.ids()
        extra_id = json.loads(
            wait_until(
                lambda: (True, json.dumps(self.ids([extra])[extra])), self.timeout, f"{extra} did not answer"
            )
        )
        everyone = {**ids, extra: extra_id}
        wait_until(
            lambda: self.meshed(everyone), self.timeout, f"the new node {extra_id} was not found by all"
        )
        for url in everyone:
            show(f"{url} peers", sorted(self.peers(url)))
        took = time.monotonic() - started
        return f"new node {extra_id} and all {len(ids)} nodes listed each other, {took:.1f}s into the check"


CHECKS = {
    "wait": lambda c, a: c.wait(),
    "health": lambda c, a: c.health(),
    "all-peers": lambda c, a: c.all_peers(),
    "count": lambda c, a: c.count(),
    "increment": lambda c, a: c.increment(),
    "retry": lambda c, a: c.retry(),
    "sync": lambda c, a: c.sync(),
    "peers": lambda c, a: c.peers_registration(),
    "remove-existing-peer": lambda c, a: c.remove_existing_peer(),
    "discovery": lambda c, a: c.discovery(a.extra),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("check", choices=sorted(CHECKS))
    parser.add_argument(
        "--nodes",
        default=os.environ.get("DCOUNTER_NODES") or DEFAULT_NODES,
        help="node URLs, separated by commas or spaces [$DCOUNTER_NODES, else 9088-9090 on 127.0.0.1]",
    )
    parser.add_argument("--extra", help="URL of a node started for the discovery check")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for a condition [20]")
    args = parser.parse_args(argv)
    urls = [u.rstrip("/") for u in args.nodes.replace(",", " ").split()]
    name = f"test-{args.check}"
    try:
        result = CHECKS[args.check](Cluster(urls, args.timeout), args)
    except CheckFailed as e:
        print(f"FAIL {name}: {e}", file=sys.stderr)
        return 1
    print(f"ok {name}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
