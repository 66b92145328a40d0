"""
Several dcounter nodes in one Python process, on one reactor: how the scale
benchmark fits 100 nodes on a 2-core host, where 100 Python processes do not
(starting 50 of them alone took 86 s).

    python benchmarks/multinode.py --ports 9001,9002,9003 [--host 127.0.0.1]
        [--log FILE] [--log-level warn] -- [twistd dcounter options...]

Each node is a whole node, built by the plugin's own L{dcounter.tap.Options}
and L{dcounter.tap.makeService}, exactly as `twistd dcounter` builds it: its
own HTTP port, store, membership, SWIM, replication, discovery socket and
metrics.  The options after `--` go to every node (e.g. `--cluster`,
`--discovery-port`, `--in-memory`); `--port`, `--listen` and `--advertise`
are set per node from `--ports`.  A node with a data directory gets
`DIR/PORT` under `--data-dir DIR`.

Broadcast discovery works as between processes: each node's discovery
socket is bound to the shared port with SO_REUSEPORT (Twisted's
listenMulticast(listenMultiple=True)), and a datagram sent to
127.255.255.255 reaches every socket bound to that port, in this process or
another.

What the nodes share, and separate processes would not: the reactor (one
core at most for all of them), the log (one file, every node's lines;
`--log-level` warn by default, so that 100 nodes' start lines stay out),
and the process's memory and garbage collector.  SIGTERM or SIGINT stops
every node as twistd would stop one (its parts in reverse order), then the
reactor.

Prints one line, `ready PORT,PORT,...`, once every node's services have
started (the ports are listening).  `--stagger S` starts the nodes S seconds
apart, as nodes deployed one after another would.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import split_node_args
from twisted.application.service import MultiService, Service
from twisted.internet import reactor
from twisted.logger import globalLogBeginner

from dcounter import logs
from dcounter.tap import Options, makeService


def node_options(port: int, host: str, common: list[str]) -> Options:
    """
    One node's options: C{common} with this node's port, listening address
    and node id, and its own data directory under a given --data-dir.
    """
    args = list(common)
    if "--data-dir" in args:
        i = args.index("--data-dir") + 1
        args[i] = str(Path(args[i]) / str(port))
    options = Options()
    options.parseOptions(
        [
            "--port",
            str(port),
            "--listen",
            f"tcp:{port}:interface={host}",
            "--advertise",
            f"{host}:{port}",
            *args,
        ]
    )
    return options


def main(argv: list[str] | None = None) -> None:
    argv, common = split_node_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ports", required=True, help="comma-separated HTTP ports, one node each")
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address every node listens on and advertises"
    )
    parser.add_argument("--log", help="log file [stderr]")
    parser.add_argument("--log-level", default="warn", choices=list(logs.LEVELS))
    parser.add_argument(
        "--stagger", type=float, default=0.0, help="seconds between the starts of two nodes [0: together]"
    )
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",") if p]

    out = open(args.log, "a") if args.log else sys.stderr  # noqa: SIM115 (open while the reactor runs)
    globalLogBeginner.beginLoggingTo([logs.observer(out, "text", args.log_level)], redirectStandardIO=False)

    # makeService with the reactor given: it does not reach for twistd's
    # options or check the port (the listening services report it at start).
    top = MultiService()
    for port in ports:
        makeService(node_options(port, args.host, common), reactor).setServiceParent(top)

    nodes = list(top)

    def started() -> None:
        # MultiService's own start, with each node's delayed by --stagger.
        Service.startService(top)
        for i, node in enumerate(nodes):
            reactor.callLater(i * args.stagger, node.startService)  # type: ignore[attr-defined]
        reactor.callLater(  # type: ignore[attr-defined]
            len(nodes) * args.stagger, print, "ready " + ",".join(map(str, ports)), flush=True
        )

    reactor.callWhenRunning(started)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
