#!/usr/bin/env python3
"""
Local dcounter nodes as background `twistd` processes, for `make cluster`.

    local_cluster.py start --run DIR --twistd PATH --ports 9088 9089 9090 [-- dcounter options]
    local_cluster.py stop --run DIR [--ports ...]

start runs one daemonized `twistd dcounter` per port (pid file, log and data
in DIR) and all or nothing: a port that another program holds, or a node
that does not start, stops the nodes this run started and exits 1 with one
line saying why.  stop sends SIGTERM to each node and returns only once it
has exited, so its data directory can then be removed.

Standard library only.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class Failed(Exception):
    pass


def pid_of(run: Path, port: int) -> int | None:
    """The pid of our node on C{port}, if it is running."""
    try:
        pid = int((run / f"{port}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid  # no /proc: trust the pid file
    # A stale pid file may name a pid reused by an unrelated process.
    return pid if b"twistd" in cmdline else None


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        # As twistd listens: with SO_REUSEADDR, so TIME_WAIT does not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def stop(run: Path, ports: list[int], timeout: float = 20.0) -> list[int]:
    """SIGTERM our nodes on C{ports}; wait until they have exited."""
    pids = {port: pid for port in ports if (pid := pid_of(run, port)) is not None}
    for pid in pids.values():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for port, pid in pids.items():
        while pid_of(run, port) == pid:
            if time.monotonic() >= deadline:
                raise Failed(f"node {port} (pid {pid}) did not stop within {timeout:g}s of SIGTERM")
            time.sleep(0.05)
    return sorted(pids)


def all_ports(run: Path) -> list[int]:
    return sorted(int(p.stem) for p in run.glob("*.pid") if p.stem.isdigit())


def start(run: Path, twistd: str, ports: list[int], host: str, options: list[str]) -> list[int]:
    run.mkdir(parents=True, exist_ok=True)
    ours = [port for port in ports if pid_of(run, port) is not None]
    for port in ours:
        print(f"node {port} already running")
    to_start = [port for port in ports if port not in ours]
    taken = [port for port in to_start if not port_free(host, port)]
    if taken:
        raise Failed(
            f"port {', '.join(map(str, taken))} on {host} is in use by another program: started nothing "
            f"(free it, or choose ports: make cluster PORTS='...')"
        )
    started: list[int] = []
    for port in to_start:
        command = [
            twistd,
            f"--pidfile={run / f'{port}.pid'}",
            f"--logfile={run / f'{port}.log'}",
            "dcounter",
            "--port",
            str(port),
            "--listen",
            f"tcp:{port}:interface={host}",
            "--advertise",
            f"{host}:{port}",
            "--data-dir",
            str(run / f"data-{port}"),
            *options,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or pid_of(run, port) is None:
            lines = (result.stderr or result.stdout).strip().splitlines()
            reason = lines[-1] if lines else f"exit status {result.returncode}"
            stopped = stop(run, started)
            undone = f"; stopped {', '.join(map(str, stopped))}" if stopped else ""
            log = run / f"{port}.log"
            where = f" (log: {log})" if log.exists() else ""
            raise Failed(f"node {port} did not start: {reason}{where}{undone}")
        started.append(port)
    return started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--run", type=Path, default=Path("run"), help="pid files, logs and data [run]")
    parser.add_argument(
        "--ports", type=int, nargs="*", help="HTTP ports [start: 9088 9089 9090; stop: all in --run]"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on and advertise [127.0.0.1]"
    )
    parser.add_argument("--twistd", default="twistd", help="the twistd to run [twistd]")
    argv = sys.argv[1:] if argv is None else argv
    # What follows `--` goes to `twistd dcounter` as it is.
    options = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        if args.action == "start":
            started = start(args.run, args.twistd, args.ports or [9088, 9089, 9090], args.host, options)
            if started:
                print(f"started {' '.join(map(str, started))} on {args.host} (logs: {args.run}/PORT.log)")
        else:
            stopped = stop(args.run, args.ports if args.ports else all_ports(args.run))
            if stopped:
                print(f"stopped {' '.join(map(str, stopped))}")
    except Failed as e:
        print(f"make cluster: {e}" if args.action == "start" else f"make stop: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
