"""
The security options: keys from --secret, $DCOUNTER_SECRET and
--secret-file, tokens, --max-counters, and reloading keys on SIGHUP.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError

from dcounter.api import CounterSite
from dcounter.keyring import Keyring, key_id
from dcounter.tap import KeyReloader, Options, makeService

ADVERTISE = ["--advertise", "10.0.0.1:9100", "--in-memory"]
A = "key-A-0123456789abcdef"
B = "key-B-fedcba9876543210"
C = "key-C-0123456789abcdef"


def parse(*args: str, environ: dict[str, str] | None = None) -> Options:
    options = Options(environ={} if environ is None else environ)
    options.parseOptions([*ADVERTISE, *args])
    return options


def test_no_key_by_default() -> None:
    options = parse()
    assert options["keys"] == []
    assert options["max-counters"] == 10000


def test_keys_in_order_secret_env_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotation\n{C}\n")
    options = parse("--secret", A, "--secret-file", str(path), environ={"DCOUNTER_SECRET": B})
    assert options["keys"] == [A, B, C]
    options = parse("--secret", A, "--secret", B)
    assert options["keys"] == [A, B]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--secret", "short"], "at least 16 bytes"),
        (["--secret-file", "/nonexistent/keys"], "--secret-file"),
        (["--admin-token", "short"], "--admin-token"),
        (["--client-token", "short"], "--client-token"),
        (["--max-counters", "0"], "at least 1"),
    ],
)
def test_bad_security_options_are_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(*args)


def _api(service):
    (site,) = [s for s in service if hasattr(s, "factory") and isinstance(s.factory, CounterSite)]
    return site.factory.resource.api


def test_make_service_wires_the_keyring(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{A}\n")
    service = makeService(
        parse("--secret-file", str(path), "--admin-token", "operator-0123456789"), MemoryReactorClock()
    )
    api = _api(service)
    assert api.auth_mode == "on"
    assert api.guard.keyring.ids == [key_id(A.encode())]
    assert api.admin_token() == "operator-0123456789"
    assert api.health_checker.admission.keyring is api.guard.keyring
    assert any(isinstance(s, KeyReloader) for s in service)


def test_reload_replaces_keys_and_refuses_to_drop_them_all(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{A}\n")
    options = parse("--secret-file", str(path))
    keys = Keyring(options["keys"])
    reloader = KeyReloader(options, keys, MemoryReactorClock())
    path.write_text(f"{B}\n{A}\n")
    reloader.reload()
    assert keys.signing_id == key_id(B.encode()) and len(keys.ids) == 2
    path.write_text("")
    reloader.reload()  # would turn auth off: refused
    assert keys.signing_id == key_id(B.encode())
    path.write_text("short\n")
    reloader.reload()  # a bad key: refused
    assert len(keys.ids) == 2
    path.unlink()
    reloader.reload()
    assert len(keys.ids) == 2
