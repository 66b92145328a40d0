"""
Logs and operator errors: JSON lines, the default level, one line for a
usage error under twistd, dcounter's version, a port in use.
"""

from __future__ import annotations

import io
import json
import socket

import pytest
from twisted.application.service import Application, IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, LogLevel

from dcounter import __version__, logs
from dcounter.tap import Options, check_listen


def emit(observer: ILogObserver, level: LogLevel, fmt: str, **fields: object) -> None:
    Logger(namespace="test", observer=observer).emit(level, fmt, **fields)


def test_json_lines_one_object_per_event() -> None:
    out = io.StringIO()
    observer = logs.observer(out, "json", "info")
    emit(
        observer, LogLevel.info, "peer {peer}: {old} -> {new}", peer="10.0.0.2:8088", old="alive", new="dead"
    )
    emit(observer, LogLevel.warn, "odd {thing}", thing=object())
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "peer 10.0.0.2:8088: alive -> dead"
    assert (first["level"], first["namespace"], first["peer"], first["new"]) == (
        "info",
        "test",
        "10.0.0.2:8088",
        "dead",
    )
    assert first["time"].endswith("+0000") and "T" in first["time"]
    assert second["level"] == "warn" and "thing" not in second  # not a plain value: in the message only


def test_json_lines_carry_a_failure() -> None:
    out = io.StringIO()
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        Logger(namespace="test", observer=logs.observer(out, "json")).failure("round failed")
    (record,) = map(json.loads, out.getvalue().splitlines())
    assert record["level"] == "critical"
    assert record["error"] == "division by zero"
    assert "ZeroDivisionError" in record["traceback"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_default_level_drops_debug(fmt: str) -> None:
    out = io.StringIO()
    observer = logs.observer(out, fmt)
    emit(observer, LogLevel.debug, "push to {peer} failed", peer="x")
    assert out.getvalue() == ""
    emit(observer, LogLevel.info, "kept")
    assert "kept" in out.getvalue()


def test_debug_level_keeps_debug() -> None:
    out = io.StringIO()
    emit(logs.observer(out, "text", "debug"), LogLevel.debug, "noise")
    assert "noise" in out.getvalue()


def test_node_service_hands_twistd_its_observer() -> None:
    """twistd's logger takes the application's ILogObserver component."""
    observer = logs.observer(io.StringIO(), "json")
    application = Application("dcounter")
    service = logs.NodeService(observer)
    service.setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer
    assert service in list(IServiceCollection(application))


def test_twistd_output_follows_twistd_options(tmp_path) -> None:
    import sys

    assert logs.twistd_output({"nodaemon": True}) is sys.stdout
    assert logs.twistd_output({"logfile": "-", "nodaemon": True}) is sys.stdout
    assert logs.twistd_output({"logger": "x.y", "nodaemon": True}) is None
    assert logs.twistd_output({"syslog": True}) is None
    out = logs.twistd_output({"logfile": str(tmp_path / "node.log")})
    assert out is not None
    out.write("x\n")
    out.close()
    assert (tmp_path / "node.log").read_text() == "x\n"


# Options under twistd.


class _Twistd(dict):
    """Stands for twistd's ServerOptions, the parent of a subcommand's options."""


def under_twistd(*args: str, environ: dict[str, str] | None = None) -> Options:
    options = Options(environ={} if environ is None else environ)
    options.parent = _Twistd()
    options.parseOptions(list(args))
    return options


@pytest.mark.parametrize(
    ("args", "environ", "message"),
    [
        (["--port", "0"], {}, "--port must be from 1 to 65535, not 0"),
        (["--port", "http"], {}, "--port takes a port number, not 'http'"),
        (["--health-interval", "0"], {}, "--health-interval must be at least 0.05 seconds, not 0"),
        (["--anti-entropy-interval", "x"], {}, "--anti-entropy-interval takes a number of seconds"),
        (["--broadcast", "1.2.3"], {}, "--broadcast takes IPv4 addresses like 10.0.0.255, not '1.2.3'"),
        ([], {"PEERS": "garbage"}, "$PEERS='garbage': a peer must be HOST:PORT"),
        (["--peers", "garbage"], {}, "--peers='garbage'"),
        ([], {"PORT": "99999"}, "$PORT='99999'"),
        (["--bogus"], {}, "option --bogus not recognized"),
        (["--log-level", "loud"], {}, "--log-level must be one of debug, info, warn, error"),
    ],
)
def test_usage_errors_are_one_line_naming_the_option(args: list[str], environ: dict, message: str) -> None:
    with pytest.raises(SystemExit) as e:
        under_twistd("--advertise", "10.0.0.1:9100", *args, environ=environ)
    text = str(e.value.code)
    assert text.startswith("twistd dcounter: ")
    assert message in text
    assert "\n" not in text and "Options:" not in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        under_twistd("--version")
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"dcounter {__version__} (Twisted ")


def test_log_options() -> None:
    options = under_twistd("--advertise", "10.0.0.1:9100", "--log-format", "json", "--log-level", "debug")
    assert (options["log-format"], options["log-level"]) == ("json", "debug")


def test_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            check_listen(f"tcp:{port}:interface=127.0.0.1", MemoryReactorClock())
    assert str(e.value.code) == (
        f"dcounter: cannot listen on 127.0.0.1 port {port}: the port is in use (another dcounter node?); "
        "choose another with --port or --listen"
    )


def test_free_port_passes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check_listen(
        f"tcp:{port}:interface=127.0.0.1", MemoryReactorClock()
    )  # nothing raised, nothing left bound
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))
