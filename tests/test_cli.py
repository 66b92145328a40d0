"""
The dcounter command: options, and each command against in-memory nodes
through the shared StubTreq network, on a Clock.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.usage import UsageError

from dcounter import __version__
from dcounter.cli import DEFAULT_NODE, CLIError, NodeClient, Options, run
from tests.support import Network, TestNode, address, failure_of, result_of

A = address(9001)
B = address(9002)
C = address(9003)


def parse(*args: str, environ: dict[str, str] | None = None) -> Options:
    options = Options(environ={} if environ is None else environ)
    options.parseOptions(list(args))
    return options


@pytest.fixture
def net() -> Network:
    return Network()


@pytest.fixture
def nodes(net: Network) -> list[TestNode]:
    nodes = net.add_many(3)
    net.mesh()
    return nodes


def cli(net: Network, *args: str, node: str = A) -> tuple[io.StringIO, Deferred[Any]]:
    """
    Run the command against C{node}; return what it prints and its result.
    """
    options = parse("--node", node, *args)
    out = io.StringIO()
    client = NodeClient(net, options["node"], net.clock, options["timeout"])
    d = Deferred.fromCoroutine(run(options, client, out, net.clock))
    net.settle()
    return out, d


# Options.


def test_node_from_option_environment_or_default() -> None:
    assert parse("status")["node"] == DEFAULT_NODE
    assert parse("status", environ={"DCOUNTER_URL": "10.0.0.1:9100/"})["node"] == "http://10.0.0.1:9100"
    assert (
        parse("--node", "https://n1:443", "status", environ={"DCOUNTER_URL": "x:1"})["node"]
        == "https://n1:443"
    )


def test_commands_and_their_arguments() -> None:
    options = parse("incr", "hits", "--by", "5")  # options after the name too
    assert (options.subCommand, options.subOptions["name"], options.subOptions["by"]) == ("incr", "hits", 5)
    assert parse("get").subOptions["name"] == "default"
    with pytest.raises(UsageError, match="a command is needed"):
        parse()
    with pytest.raises(UsageError, match="--by must be at least 1"):
        parse("incr", "--by", "0")
    with pytest.raises(UsageError, match="Unknown command"):
        parse("frob")


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse("--version")
    assert e.value.code == 0
    assert capsys.readouterr().out == f"dcounter {__version__}\n"


# Commands.


def test_status_table_lists_every_member(net: Network, nodes: list[TestNode]) -> None:
    nodes[0].increment(3)
    net.settle()
    printed, d = cli(net, "status")
    result_of(d)
    out = printed.getvalue()
    lines = out.splitlines()
    assert lines[0] == f"cluster 'dcounter' seen from {A} (*): converged"
    assert lines[1].split() == ["MEMBER", "STATE", "default", "LAST", "SEEN"]
    assert [line.split()[0] for line in lines[2:]] == [A, B, C]
    assert lines[2].split()[1:4] == ["*", "alive", "3"]
    assert lines[3].split()[1:3] == ["alive", "3"]


def test_status_shows_lag_and_silent_members(net: Network, nodes: list[TestNode]) -> None:
    net.cut(C)
    nodes[0].increment(2)
    net.settle()
    printed, d = cli(net, "status")
    result_of(d)
    out = printed.getvalue()
    assert out.splitlines()[0].endswith(": members that answer agree, 1 not answering")
    c_line = [line for line in out.splitlines() if line.startswith(C)][0]
    assert "?" in c_line.split() and "(no answer: " in c_line


def test_json_output(net: Network, nodes: list[TestNode]) -> None:
    printed, d = cli(net, "--json", "status")
    result_of(d)
    out = printed.getvalue()
    assert [m["id"] for m in json.loads(out)["members"]] == [A, B, C]


def test_members(net: Network, nodes: list[TestNode]) -> None:
    printed, d = cli(net, "members")
    result_of(d)
    out = printed.getvalue()
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["PEER", "STATE", "LAST"]
    assert [(line.split()[0], line.split()[1]) for line in lines[1:]] == [(B, "alive"), (C, "alive")]


def test_get_and_incr(net: Network, nodes: list[TestNode]) -> None:
    printed, d = cli(net, "incr", "--by", "4")
    result_of(d)
    out = printed.getvalue()
    assert out == "4\n"
    printed, d = cli(net, "incr", "hits")
    result_of(d)
    out = printed.getvalue()
    assert out == "1\n"
    printed, d = cli(net, "decr", "hits")
    result_of(d)
    out = printed.getvalue()
    assert out == "0\n"
    printed, d = cli(net, "get", node=B)
    result_of(d)
    out = printed.getvalue()
    assert out == "4\n"  # replicated
    assert nodes[1].count() == 4


def test_get_an_unknown_counter_is_one_clear_error(net: Network, nodes: list[TestNode]) -> None:
    _, d = cli(net, "get", "nope")
    error = failure_of(d).value
    assert isinstance(error, CLIError)
    assert str(error) == f"http://{A}/counters/nope answered 404: no counter named 'nope'"


def test_dead_node_is_one_clear_error(net: Network, nodes: list[TestNode]) -> None:
    _, d = cli(net, "status", node=address(9999))  # nobody there
    error = failure_of(d).value
    assert isinstance(error, CLIError)
    assert str(error) == f"cannot reach http://{address(9999)}: connection refused"


def test_silent_node_times_out(net: Network, nodes: list[TestNode]) -> None:
    net.hold(A)
    _, d = cli(net, "--timeout", "2", "get")
    net.advance(2.5)
    assert str(failure_of(d).value) == f"no answer from http://{A} within 2 s"
    net.release(A)


def test_watch_prints_live_counts(net: Network, nodes: list[TestNode]) -> None:
    printed, d = cli(net, "watch", "--interval", "1", "--count", "3")
    nodes[0].increment(7)
    net.advance(1)
    net.advance(1)
    result_of(d)
    lines = printed.getvalue().splitlines()
    assert len(lines) == 3
    assert f"{A}=0" in lines[0] and "[converged]" in lines[0]
    assert f"{A}=7  {B}=7  {C}=7" in lines[2]


def test_version_command(net: Network, nodes: list[TestNode]) -> None:
    printed, d = cli(net, "version")
    result_of(d)
    out = printed.getvalue()
    assert out == f"dcounter {__version__}; node {A} runs dcounter {__version__}\n"


def test_incr_with_a_key_counts_once(net: Network, nodes: list[TestNode]) -> None:
    """incr --key sends an Idempotency-Key: the same incr retried counts once, on any node."""
    for node in (A, A, B):
        printed, d = cli(net, "incr", "--by", "3", "--key", "retry-me", node=node)
        result_of(d)
        assert printed.getvalue() == "3\n"
    assert [n.count() for n in nodes] == [3, 3, 3]
