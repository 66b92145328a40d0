"""
Benchmark 2: a three-node cluster (A, B, C; seeds, no discovery).

    python benchmarks/replication.py [--quick] [--data-dir]

First, increments/s on A under wrk (-t2 -c32) while A replicates every write
to B and C.  Then replication lag: an increment of counter "lag" is
acknowledged by A, and B and C are polled (keep-alive, in a tight loop)
until both show it; the lag is the time from A's answer until both do.
Measured at rest, and again while wrk paces increments of another counter
on A at about half the maximum rate (the rate reached is printed).
Goals: at rest p50 < 2 ms, p99 < 20 ms; at half rate p99 < 100 ms.

At rest, each sample is followed by the method's own floor: an answer from
A (a GET, which replicates nothing), then one poll of B and one of C, which
have nothing to wait for.  No replication can make the lag lower than that.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from common import Client, Cluster, percentile, wait_for, wrk


def _exists(reader: Client, count: int) -> bool:
    try:
        return reader.call("GET", "/counters/lag")["count"] >= count
    except RuntimeError:  # a 404 until it arrives
        return False


def lag_samples(
    a: int, others: list[int], count: int, gap: float, floors: list[float] | None = None
) -> list[float]:
    """
    C{count} lags, in seconds, C{gap} seconds apart; and each followed by a
    floor, appended to C{floors} if given: the same polls, after an answer
    from A, of readers that have nothing to wait for (then the samples are
    twice C{gap} apart, and the floor's polls).
    """
    writer = Client(a)
    readers = [Client(p) for p in others]
    lags = []
    try:
        # The counter exists everywhere before the first sample (no 404s).
        first = writer.call("POST", "/counters/lag/increment")["count"]
        wait_for(lambda: all(_exists(r, first) for r in readers), 10, what="counter 'lag' everywhere")
        for _ in range(count):
            target = writer.call("POST", "/counters/lag/increment")["count"]
            acked = time.perf_counter()
            pending = list(readers)
            while pending:
                pending = [r for r in pending if r.call("GET", "/counters/lag").get("count", 0) < target]
            lags.append(time.perf_counter() - acked)
            time.sleep(gap)  # pacing the samples, not waiting for a condition
            if floors is not None:
                writer.call("GET", "/counters/lag")
                answered = time.perf_counter()
                for reader in readers:
                    reader.call("GET", "/counters/lag")
                floors.append(time.perf_counter() - answered)
                time.sleep(gap)
    finally:
        for client in (writer, *readers):
            client.close()
    return lags


def run(quick: bool, data_dir: bool = False) -> dict[str, float]:
    seconds = 4.0 if quick else 10.0
    samples = 200 if quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        nodes = cluster.mesh(3, in_memory=not data_dir)
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                node.wait_up(60)
            wait_for(lambda: all(len(n.peers()) == 2 for n in nodes), 30, what="a mesh of three")
            a, others = nodes[0], [n.port for n in nodes[1:]]
            url = f"http://127.0.0.1:{a.port}/counters/load/increment"
            rate = wrk(url, seconds)
            wait_for(lambda: all(n.count("load") == a.count("load") for n in nodes), 30, what="convergence")
            floors: list[float] = []
            rest = lag_samples(a.port, others, samples, 0.005, floors)
            # Half the maximum rate: 16 connections, each pausing between
            # requests so that together they make about rate / 2; a short
            # run measures how long a request takes on top of the pause.
            connections = 16
            target = rate / 2
            delay_ms = 1000 * connections / target
            reached = wrk(url, 2, connections=connections, delay_ms=delay_ms)
            latency_ms = max(0.0, 1000 * connections / reached - delay_ms)
            delay_ms = max(0.0, 1000 * connections / target - latency_ms)
            paced: list[float] = []
            load = threading.Thread(
                target=lambda: paced.append(wrk(url, seconds + 2, connections=connections, delay_ms=delay_ms))
            )
            load.start()
            time.sleep(1.0)  # let the paced load reach its rate before sampling
            busy = lag_samples(a.port, others, samples // 2, 0.005)
            load.join()
        finally:
            cluster.stop()
    ms = 1000.0
    return {
        "increments/s on A while replicating": rate,
        "lag at rest p50 ms": percentile(rest, 50) * ms,
        "lag at rest p99 ms": percentile(rest, 99) * ms,
        "floor of the lag's polls at rest p50 ms": percentile(floors, 50) * ms,
        "paced load increments/s": paced[0] if paced else float("nan"),
        "lag at half rate p50 ms": percentile(busy, 50) * ms,
        "lag at half rate p99 ms": percentile(busy, 99) * ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer samples")
    parser.add_argument("--data-dir", action="store_true", help="nodes keep their counters in SQLite")
    args = parser.parse_args()
    for name, value in run(args.quick, args.data_dir).items():
        print(f"{name}: {value:.2f}" if "ms" in name else f"{name}: {value:.0f}")


if __name__ == "__main__":
    main()
