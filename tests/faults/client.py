"""
A load client: increments and reads one node until told to stop (SIGTERM),
writing every operation to a file as a JSON line.

Run as its own process (``python -m tests.faults.client``), so that a test
can run one inside a node's network namespace, and so that load does not
compete with the test's own polling for the interpreter.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from dataclasses import asdict

from tests.faults.history import FAIL, Op, increment, read


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--read-every", type=int, default=4, help="one read per this many increments")
    parser.add_argument("--pause", type=float, default=0.002, help="seconds between a thread's operations")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--wait", default="", help="write concern: ?wait= on every increment")
    args = parser.parse_args()

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    lock = threading.Lock()
    out = open(args.out, "a", buffering=1)

    def record(op: Op) -> None:
        with lock:
            out.write(json.dumps(asdict(op)) + "\n")

    def worker() -> None:
        n = 0
        while not stopping.is_set():
            n += 1
            if n % args.read_every == 0:
                op = read(args.node, args.url, args.timeout)
            else:
                op = increment(args.node, args.url, 1, args.timeout, args.wait)
            record(op)
            # A refused connection fails at once: back off, as a client
            # would, rather than spin while the node is down.
            time.sleep(args.pause if op.type != FAIL else 0.05)

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    print("started", flush=True)
    for t in threads:
        t.join()
    out.close()


if __name__ == "__main__":
    main()
