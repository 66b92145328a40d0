"""
Server CPU per request, and requests per second, for one node answering
sequential keep-alive requests from this process.

    python benchmarks/request_cost.py [--requests 3000] [--data-dir]

Without --data-dir the node keeps its counters in memory, so POST figures are
the HTTP and CRDT cost alone; with it, each sequential increment also waits
for its own SQLite commit (no other write to share it with).
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import Cluster, process_cpu_seconds  # noqa: E402

PATHS = [("GET", "/health"), ("GET", "/count"), ("GET", "/peers"), ("POST", "/increment")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--data-dir", action="store_true", help="keep counters in SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        node = cluster.add(in_memory=not args.data_dir).start().wait_up()
        assert node.process is not None
        try:
            connection = http.client.HTTPConnection("127.0.0.1", node.port)
            for method, path in PATHS:
                before = process_cpu_seconds([node.process.pid])
                started = time.monotonic()
                for _ in range(args.requests):
                    connection.request(method, path, body=b"" if method == "POST" else None)
                    connection.getresponse().read()
                elapsed = time.monotonic() - started
                cpu = process_cpu_seconds([node.process.pid]) - before
                print(
                    f"{method} {path}: {args.requests / elapsed:.0f} requests/s sequential, "
                    f"{1e6 * cpu / args.requests:.0f} us of server CPU per request",
                    flush=True,
                )
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
