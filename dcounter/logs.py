# -*- test-case-name: tests.test_logs -*-
"""
Where a node's log lines go, and in what shape: text as twistd writes it,
or JSON lines for log shippers; at info level and above unless asked.

twistd picks its log observer after makeService: from C{--logger}, else
from an C{ILogObserver} component of the application, else from
C{--logfile}.  L{NodeService} sets that component, so C{twistd dcounter
--log-format json} works with twistd's own C{--logfile} and C{-n}; an
explicit C{--logger} or C{--syslog} is left to twistd.

C{twistd --logger=dcounter.logs.json dcounter} works too (twistd calls a
C{--logger} factory with no arguments, which is why Twisted's own
C{jsonFileLogObserver} cannot be named there): JSON lines on stdout.
"""

from __future__ import annotations

import json as _json
import signal
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatTime,
    textFileLogObserver,
)
from twisted.python import logfile
from twisted.python.components import Componentized
from zope.interface import implementer

from dcounter.service import StopInOrder

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}
FORMATS = ("text", "json")


def json_line(event: Mapping[str, Any]) -> str:
    """
    One event as one line of JSON: time (ISO 8601, UTC), level, namespace,
    message, the event's own fields that are plain values, and the
    traceback of a logged failure.
    """
    record: dict[str, Any] = {
        "time": formatTime(event.get("log_time"), timeFormat="%Y-%m-%dT%H:%M:%S.%f%z"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(dict(event)),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and _plain(value):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = str(failure.value)
        record["traceback"] = failure.getTraceback()
    return _json.dumps(record, separators=(",", ":"), default=str) + "\n"


def _plain(value: object) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(v is None or isinstance(v, (str, int, float, bool)) for v in value)
    return False


@implementer(ILogObserver)
class JSONLinesObserver:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: Mapping[str, Any]) -> None:
        self.out.write(json_line(event))
        self.out.flush()


def observer(out: IO[str], fmt: str = "text", level: str = "info") -> ILogObserver:
    """
    An observer writing to C{out} in C{fmt}, dropping events below C{level}.
    """
    inner = JSONLinesObserver(out) if fmt == "json" else textFileLogObserver(out)
    return FilteringLogObserver(inner, [LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])])


def json() -> ILogObserver:
    """
    For C{twistd --logger=dcounter.logs.json}: JSON lines on stdout, info and up.
    """
    return observer(sys.stdout, "json", "info")


def twistd_output(twistd: Mapping[str, Any]) -> IO[str] | None:
    """
    The file twistd would log to for these twistd options (C{--logfile},
    C{-n}), rotated on SIGUSR1 as twistd does; None where twistd must
    choose (C{--logger}, C{--syslog}).
    """
    if twistd.get("logger") or twistd.get("syslog"):
        return None
    name = twistd.get("logfile")
    if name == "-" or (not name and twistd.get("nodaemon")):
        return sys.stdout
    out = logfile.LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(out.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return out  # type: ignore[return-value]


class NodeService(StopInOrder):
    """
    A node's services (stopped one after another, in reverse order); when
    twistd makes it part of its application, it also hands twistd the log
    observer to use.
    """

    def __init__(self, log_observer: ILogObserver | None = None) -> None:
        super().__init__()
        self.log_observer = log_observer

    def setServiceParent(self, parent: Any) -> None:
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)
