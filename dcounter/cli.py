# -*- test-case-name: tests.test_cli -*-
"""
The C{dcounter} command: a node's view of the cluster, and its counters,
from a shell.

    dcounter [--node URL] [--json] status | members | get [NAME] |
             incr [NAME] [--by N] | decr [NAME] [--by N] | watch | version

It speaks the node's public HTTP API with treq, under C{task.react}.  A node
that cannot be reached, or that refuses a request, is one line on stderr and
exit status 1; a usage error is one line and exit status 2.
"""

from __future__ import annotations

import getopt
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from twisted.internet import task
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectionRefusedError
from twisted.python import usage

from dcounter import __version__

DEFAULT_NODE = "http://127.0.0.1:8088"


class CLIError(Exception):
    """
    Something the user must hear about, in one line: exit status 1.
    """


def node_url(value: str) -> str:
    """
    C{host:port} or a URL, as a URL without a trailing slash.
    """
    value = value.strip().rstrip("/")
    if not value:
        raise usage.UsageError("--node must not be empty")
    if "://" not in value:
        value = "http://" + value
    return value


class _Counter(usage.Options):
    synopsis = "[NAME]"

    def parseOptions(self, options: Any = None) -> None:
        # Options may follow the name (incr hits --by 5), as in most CLIs.
        try:
            opts, args = getopt.gnu_getopt(list(options or []), self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        super().parseOptions([token for pair in opts for token in pair if token] + ["--", *args])

    def parseArgs(self, name: str = "default") -> None:
        self["name"] = name


class _Change(_Counter):
    optParameters = [
        ["by", "b", 1, "Amount, from 1.", int],
        ["key", None, None, "Idempotency-Key: the same write retried with the same key counts once."],
    ]

    def postOptions(self) -> None:
        if self["by"] < 1:
            raise usage.UsageError(f"--by must be at least 1, not {self['by']}")


class _Watch(usage.Options):
    optParameters = [
        ["interval", "i", 1.0, "Seconds between updates.", float],
        ["count", "n", 0, "Stop after this many updates [default: never].", int],
    ]

    def postOptions(self) -> None:
        if not self["interval"] > 0:
            raise usage.UsageError("--interval must be more than 0")


class _Nothing(usage.Options):
    pass


class Options(usage.Options):
    synopsis = "dcounter [--node URL] [--json] COMMAND [options]"
    longdesc = (
        "Ask a dcounter node about its cluster and counters.  The node is --node, else $DCOUNTER_URL, else "
        + (DEFAULT_NODE + ".")
    )
    optParameters = [
        ["node", "n", None, f"The node's URL or HOST:PORT [default: $DCOUNTER_URL, else {DEFAULT_NODE}]."],
        ["timeout", "t", 5.0, "Seconds to wait for the node.", float],
    ]
    optFlags = [["json", "j", "Print the node's JSON instead of a table."]]
    subCommands: list[list[Any]] = [
        ["status", None, _Nothing, "This node and every member: state, counts, lag, last seen."],
        ["members", None, _Nothing, "The node's peer table."],
        ["get", None, _Counter, "A counter's value on the node [default counter: default]."],
        ["incr", None, _Change, "Increment a counter [--by N]."],
        ["decr", None, _Change, "Decrement a counter [--by N]."],
        ["watch", None, _Watch, "Counts on every member, live."],
        ["version", None, _Nothing, "The versions of this command and of the node."],
    ]

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ

    def opt_version(self) -> None:
        """
        Print dcounter's version and exit.
        """
        print(f"dcounter {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is needed: " + ", ".join(COMMANDS))
        self["node"] = node_url(self["node"] or self.environ.get("DCOUNTER_URL") or DEFAULT_NODE)
        if not self["timeout"] > 0:
            raise usage.UsageError("--timeout must be more than 0")


COMMANDS = [c[0] for c in Options.subCommands]


class NodeClient:
    """
    The node's API over treq (or anything with treq's C{request}).
    """

    def __init__(self, http: Any, base: str, clock: Any, timeout: float) -> None:
        self.http = http
        self.base = base
        self.clock = clock
        self.timeout = timeout

    async def call(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> Any:
        url = self.base + path
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        if headers:
            kwargs["headers"] = {name: [value] for name, value in headers.items()}
        started = self.clock.seconds()
        try:
            response = await Deferred.fromCoroutine(self._request(method, url, kwargs)).addTimeout(
                self.timeout, self.clock
            )
        except CLIError:
            raise
        except Exception as e:
            if isinstance(e, TimeoutError) or self.clock.seconds() - started >= self.timeout:
                raise CLIError(f"no answer from {self.base} within {self.timeout:g} s") from None
            raise CLIError(f"cannot reach {self.base}: {_reason(e)}") from None
        code, data = response
        if code != 200:
            error = data.get("error") if isinstance(data, dict) else None
            raise CLIError(f"{self.base}{path} answered {code}" + (f": {error}" if error else ""))
        return data

    async def _request(self, method: str, url: str, kwargs: dict[str, Any]) -> tuple[int, Any]:
        response = await self.http.request(method, url, reactor=self.clock, **kwargs)
        text = await response.text("utf-8")
        try:
            return response.code, json.loads(text)
        except ValueError:
            raise CLIError(f"{url} did not answer JSON (is it a dcounter node?)") from None


def _reason(error: BaseException) -> str:
    reasons = getattr(error, "reasons", None)  # treq/Agent wrap the cause in a list
    if reasons:
        return _reason(reasons[0].value)
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = str(error).strip().rstrip(".")
    for known in ("Connection refused", "No route to host", "DNS lookup failed"):
        if known.lower() in text.lower():
            return known.lower()
    return text or type(error).__name__


# Output.


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def status_table(status: dict[str, Any]) -> str:
    names = status["counters"] or ["default"]
    rows = [["MEMBER", "STATE", *names, "LAST SEEN"]]
    for m in status["members"]:
        cells = [m["id"] + (" *" if m["self"] else ""), m["state"]]
        for name in names:
            if m["counters"] is None:
                cells.append("?")
            else:
                lag = m["lag"].get(name, 0)
                cells.append(f"{m['counters'].get(name, 0)}" + (f" (-{lag})" if lag else ""))
        cells.append(ago(m["last_seen_ago"]) + ("" if m["error"] is None else f" ({m['error']})"))
        rows.append(cells)
    missing = len(status["members"]) - status["answered"]
    summary = (
        f"cluster {status['cluster']!r} seen from {status['node_id']} (*): "
        + (
            "converged"
            if status["converged"]
            else "members that answer agree"
            if status["agree"]
            else "not converged"
        )
        + (f", {missing} not answering" if missing else "")
    )
    return summary + "\n" + table(rows)


def members_table(members: dict[str, Any], now: float) -> str:
    rows = [["PEER", "STATE", "LAST SEEN", "FAILED PROBES", "INCARNATION"]]
    for p in members["members"]:
        rows.append(
            [p["id"], p["state"], ago(now - p["last_seen"]), str(p["failures"]), p["incarnation"] or "-"]
        )
    if len(rows) == 1:
        return f"{members['node_id']} has no peers"
    return table(rows)


def watch_line(status: dict[str, Any], now: float) -> str:
    names = status["counters"] or ["default"]
    parts = []
    for m in status["members"]:
        counts = "?" if m["counters"] is None else ",".join(str(m["counters"].get(n, 0)) for n in names)
        parts.append(f"{m['id']}={counts}")
    state = "converged" if status["converged"] else "agree" if status["agree"] else "diverging"
    return time.strftime("%H:%M:%S", time.localtime(now)) + "  " + "  ".join(parts) + f"  [{state}]"


# Commands.


async def run(options: Options, client: NodeClient, out: IO[str], clock: Any) -> None:
    command, sub = options.subCommand, options.subOptions
    as_json = options["json"]

    def show(data: Any, text: Callable[[], str]) -> None:
        out.write((json.dumps(data) if as_json else text()) + "\n")

    if command == "status":
        status = await client.call("GET", "/status")
        show(status, lambda: status_table(status))
    elif command == "members":
        members = await client.call("GET", "/members")
        show(members, lambda: members_table(members, clock.seconds()))
    elif command == "get":
        name = sub["name"]
        reply = await client.call("GET", "/count" if name == "default" else f"/counters/{name}")
        show(reply, lambda: str(reply["count"]))
    elif command in ("incr", "decr"):
        action = "increment" if command == "incr" else "decrement"
        headers = None if sub["key"] is None else {"Idempotency-Key": sub["key"]}
        reply = await client.call("POST", f"/counters/{sub['name']}/{action}", {"by": sub["by"]}, headers)
        show(reply, lambda: str(reply["count"]))
    elif command == "version":
        reply = await client.call("GET", "/version")
        show(
            {"cli": __version__, "node": reply},
            lambda: f"dcounter {__version__}; node {reply['node_id']} runs dcounter {reply['version']}",
        )
    elif command == "watch":
        updates = 0
        while True:
            status = await client.call("GET", "/status")
            show(status, lambda: watch_line(status, clock.seconds()))
            out.flush()
            updates += 1
            if sub["count"] and updates >= sub["count"]:
                return
            await task.deferLater(clock, sub["interval"], lambda: None)


def main(argv: Sequence[str] | None = None) -> None:
    """
    The console script.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        sys.stderr.write(f"dcounter: {e} (see dcounter --help)\n")
        raise SystemExit(2) from None

    async def go(reactor: Any) -> None:
        import treq

        client = NodeClient(treq, options["node"], reactor, options["timeout"])
        try:
            await run(options, client, sys.stdout, reactor)
        except CLIError as e:
            sys.stderr.write(f"dcounter: {e}\n")
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None

    task.react(lambda reactor: Deferred.fromCoroutine(go(reactor)))
