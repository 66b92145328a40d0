# -*- test-case-name: tests.test_keyring -*-
"""
The cluster keyring: the keys that sign and verify node-to-node messages, and
the replay window.  Pure: no I/O, no Twisted; time is passed in.

Keys rotate with no downtime, as in Serf and memberlist: the first key signs,
every key verifies.  Install the new key everywhere (second), move it first
everywhere, then remove the old one.

Every signed message carries an L{wire.Auth}: the signing key's id, the
sender's node id, its boot (a random id drawn at each start), a timestamp
(ms), a sequence number, and an HMAC-SHA256 over all of these, the message's
context (channel, method, path, recipient, or the request a response
answers) and its whole body.  A receiver accepts a
message only if:

  - its key id is one of ours (C{unknown_key});
  - its timestamp is within C{skew} seconds of our clock (C{stale});
  - its MAC verifies (C{bad_mac});
  - its sequence number passes the sender's replay window (C{replayed}):
    RFC 4303's sliding window (section 3.4.3), one per sender, boot and
    channel.

A sender's sequence numbers count from 1 in each boot, so a restarted node
(whatever its clock did) starts a window of its own, while its old boot's
window still refuses replays of what it sent before.  The windows only
remember senders since this node started: within C{skew} seconds after a
restart, a message captured just before it could be accepted once more.
That replays state a CRDT merge already holds, or an announcement.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import sys
from collections.abc import Iterable, Sequence

from dcounter import wire

#: Shorter keys are refused: they could be guessed.
MIN_KEY_BYTES = 16
#: Drop reasons, in the order they are checked.
REASONS = ("unsigned", "malformed", "unknown_key", "stale", "bad_mac", "replayed")


class KeyringError(ValueError):
    """
    A key is unusable (too short, not text).
    """


class Refused(Exception):
    """
    A message failed verification; C{reason} is one of L{REASONS}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_id(secret: bytes) -> str:
    """
    A public name for a key: 8 hex digits of a hash of it.
    """
    return hashlib.sha256(b"dcounter key id\0" + secret).hexdigest()[:8]


def keys_from_file(text: str) -> list[str]:
    """
    The keys of a key file: one a line; blank lines and lines starting with
    C{#} are skipped; surrounding whitespace is not part of a key.
    """
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _framed(parts: Iterable[bytes]) -> bytes:
    # Each part with its length first: no two lists of parts frame alike.
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


class Keyring:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._keys: dict[str, bytes] = {}
        self.set(secrets)

    def set(self, secrets: Iterable[str]) -> None:
        """
        Replace the keys: the first signs, all verify.

        @raise KeyringError: if a key is too short; nothing changes.
        """
        keys: dict[str, bytes] = {}
        for secret in secrets:
            raw = secret.encode()
            if len(raw) < MIN_KEY_BYTES:
                raise KeyringError(f"a cluster key must be at least {MIN_KEY_BYTES} bytes")
            keys.setdefault(key_id(raw), raw)
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    @property
    def signing_id(self) -> str | None:
        return next(iter(self._keys), None)

    def mac(self, kid: str, parts: Sequence[bytes]) -> str | None:
        """
        The MAC of C{parts} under key C{kid}, or None if we have no such key.
        """
        key = self._keys.get(kid)
        if key is None:
            return None
        return hmac.new(key, _framed(parts), hashlib.sha256).hexdigest()

    def admin_token(self) -> str | None:
        """
        The operator token derived from the signing key (when no
        C{--admin-token} is given): HMAC-SHA256(key, "dcounter admin token"),
        in hex.  It changes when the signing key does.
        """
        kid = self.signing_id
        if kid is None:
            return None
        return hmac.new(self._keys[kid], b"dcounter admin token", hashlib.sha256).hexdigest()


class ReplayWindow:
    """
    RFC 4303's anti-replay window: the highest sequence number accepted,
    and a bitmap of which of the C{size} below it were seen.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.top = -1
        self._seen = 0  # bit i: top - i was seen

    def accepts(self, seq: int) -> bool:
        if seq > self.top:
            return True
        offset = self.top - seq
        return offset < self.size and not (self._seen >> offset) & 1

    def record(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            self._seen = ((self._seen << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = seq
        else:
            self._seen |= 1 << (self.top - seq)


class Guard:
    """
    Signs what this node sends and checks what it receives, with a keyring;
    counts what it accepts and what it drops, by channel and reason.
    """

    def __init__(
        self,
        keyring: Keyring,
        self_id: str,
        *,
        skew: float = 30.0,
        window: int = 4096,
        max_senders: int = 4096,
        boot: str | None = None,
    ) -> None:
        """
        @param boot: this sender's boot id (16 hex digits); random if None.
        @param max_senders: the most windows kept; the least recently used
            is forgotten first.
        """
        self.keyring = keyring
        self.boot = boot or os.urandom(8).hex()
        self.self_id = self_id
        self.skew = skew
        self.window = window
        self.max_senders = max_senders
        self._seq = 0
        self._windows: dict[tuple[str, str, str], ReplayWindow] = {}
        self.accepted: dict[str, int] = {"udp": 0, "http": 0}
        self.dropped: dict[str, dict[str, int]] = {"udp": {}, "http": {}}

    @property
    def enabled(self) -> bool:
        return self.keyring.enabled

    def _next_seq(self) -> int:
        # Dense, so that the window's width is a count of messages.
        self._seq += 1
        return self._seq

    def _parts(self, context: Sequence[bytes], auth: wire.Auth, payload: bytes) -> list[bytes]:
        return [
            b"dcounter-mac-1",
            *context,
            auth.key_id.encode(),
            auth.sender.encode(),
            auth.boot.encode(),
            str(auth.timestamp).encode(),
            str(auth.seq).encode(),
            payload,
        ]

    def seal(self, context: Sequence[bytes], payload: bytes, now: float) -> wire.Auth:
        """
        Sign C{payload} in C{context} with the signing key.
        """
        kid = self.keyring.signing_id
        if kid is None:
            raise KeyringError("no key to sign with")
        auth = wire.Auth(kid, self.self_id, self.boot, int(now * 1000), self._next_seq(), "")
        mac = self.keyring.mac(kid, self._parts(context, auth, payload))
        assert mac is not None
        return dataclasses.replace(auth, mac=mac)

    def check(
        self,
        channel: str,
        context: Sequence[bytes],
        auth: wire.Auth | None,
        payload: bytes,
        now: float,
        *,
        replay: bool = True,
    ) -> None:
        """
        Verify a message received on C{channel} ("udp" or "http").

        @param replay: check and advance the sender's replay window (not for
            a response, which is bound to our own request instead).
        @raise Refused: counted under its reason; the message must be dropped.
        """
        try:
            self._check(channel, context, auth, payload, now, replay)
        except Refused as e:
            self.refused(channel, e.reason)
            raise
        self.accepted[channel] += 1

    def refused(self, channel: str, reason: str) -> None:
        """
        Count a message of C{channel} dropped for C{reason}.
        """
        counts = self.dropped[channel]
        counts[reason] = counts.get(reason, 0) + 1

    def _check(
        self,
        channel: str,
        context: Sequence[bytes],
        auth: wire.Auth | None,
        payload: bytes,
        now: float,
        replay: bool,
    ) -> None:
        if auth is None:
            raise Refused("unsigned")
        expected = self.keyring.mac(auth.key_id, self._parts(context, auth, payload))
        if expected is None:
            raise Refused("unknown_key")
        if abs(auth.timestamp / 1000 - now) > self.skew:
            raise Refused("stale")
        if not hmac.compare_digest(expected, auth.mac):
            raise Refused("bad_mac")
        if replay:
            key = (channel, auth.sender, auth.boot)
            window = self._windows.pop(key, None)  # re-inserted last: least recently used first out
            if window is None:
                window = ReplayWindow(self.window)
                while len(self._windows) >= self.max_senders:
                    self._windows.pop(next(iter(self._windows)))
            self._windows[key] = window
            if not window.accepts(auth.seq):
                raise Refused("replayed")
            window.record(auth.seq)

    def info(self) -> dict[str, object]:
        return {
            "auth": "on" if self.enabled else "off",
            "signing_key": self.keyring.signing_id,
            "keys": self.keyring.ids,
            "accepted": dict(self.accepted),
            "dropped": {channel: dict(counts) for channel, counts in self.dropped.items()},
        }


# The contexts a MAC covers besides the message, one per kind of message.


def datagram_context() -> list[bytes]:
    return [b"udp"]


def request_context(method: str, path: str, to: str) -> list[bytes]:
    """
    An HTTP request to C{to} (a node id; "" for one any node may take: a
    probe, which may be sent to a seed's name rather than its id).
    """
    return [b"request", method.encode(), path.encode(), to.encode()]


def response_context(status: int, request: wire.Auth) -> list[bytes]:
    """
    An HTTP response: bound to the request it answers, so that it cannot
    be replayed as the answer to another.
    """
    return [
        b"response",
        str(status).encode(),
        request.sender.encode(),
        request.boot.encode(),
        str(request.seq).encode(),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """
    C{python -m dcounter.keyring admin-token [KEY-FILE]}: print the admin
    token derived from the first key of KEY-FILE, or of $DCOUNTER_SECRET.
    """
    import os

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "admin-token" or len(args) > 2:
        print("usage: python -m dcounter.keyring admin-token [KEY-FILE]", file=sys.stderr)
        return 2
    if len(args) == 2:
        with open(args[1]) as f:
            secrets = keys_from_file(f.read())
    else:
        secrets = [os.environ["DCOUNTER_SECRET"]] if os.environ.get("DCOUNTER_SECRET") else []
    token = Keyring(secrets).admin_token()
    if token is None:
        print("no key found", file=sys.stderr)
        return 1
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
