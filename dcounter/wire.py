# -*- test-case-name: tests.test_wire -*-
"""
Wire formats: what crosses the network, decoded and checked at the edge.

Every message a peer or a client sends is decoded here, into plain values the
rest of the code can trust; whatever does not fit raises L{MalformedMessage}
with a message fit to send back.  Encoding is here too, so that each format
has one home.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dcounter.counter import FOLDED, MAX_SLOT, MIN_VALUE, Slot, State
from dcounter.idempotency import Entry, KeyState, Record
from dcounter.membership import MAX_GENERATION

#: A JSON request body larger than this is refused (413) before it is parsed.
MAX_BODY = 64 * 1024
#: Peer state messages may be larger: they carry whole counter maps.
MAX_SYNC_BODY = 16 * 1024 * 1024
#: The largest amount one request may add or subtract, and the largest
#: count the legacy C{/sync} may raise a counter to: far enough below
#: 2^63-1 that no request can leave a node's own slot unable to grow.
MAX_AMOUNT = 2**53 - 1
MAX_NAME = 128
MAX_MEMBERS = 4096
#: The longest node id a node may take: its replica ids (NODE/INCARNATION,
#: an incarnation being 17 characters, and NODE/folded-INCARNATION for a
#: fold) are tokens of at most L{MAX_NAME}, and peers refuse a sync or a
#: digest answer with a longer one.
MAX_NODE_ID = MAX_NAME - len("/" + FOLDED) - 17

_COUNTER_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{MAX_NAME - 1}}}\Z")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
_TOKEN = re.compile(rf"[A-Za-z0-9_.:/\[\]-]{{1,{MAX_NAME}}}\Z")


class MalformedMessage(ValueError):
    """
    A message does not decode, or a field of it is missing or wrong.  The
    text says what, for the sender.
    """


# Scalars.


def counter_name(value: object) -> str:
    if not isinstance(value, str) or not _COUNTER_NAME.match(value):
        raise MalformedMessage(
            f"counter names are 1 to {MAX_NAME} letters, digits, '_', '.', ':' or '-',"
            " starting with a letter or digit"
        )
    return value


def address(value: object, what: str = "address") -> str:
    """
    Check a C{HOST:PORT} peer address (a node id) and return it.  HOST is
    a hostname or an IPv4 address: nodes serve and probe over IPv4 only, so
    an IPv6 literal could never answer.
    """
    if not isinstance(value, str) or len(value) > 300:
        raise MalformedMessage(f"{what} must be a HOST:PORT string")
    host, sep, port = value.rpartition(":")
    # isdecimal, not isdigit: isdigit() is true of '²', which int() refuses.
    if not sep or not port.isdecimal() or not 0 < int(port) < 65536 or port != str(int(port)):
        raise MalformedMessage(f"{what} must be HOST:PORT with a port from 1 to 65535")
    if host.startswith("["):
        raise MalformedMessage(f"{what} must be a hostname or an IPv4 address, not IPv6")
    if not _HOSTNAME.match(host):
        raise MalformedMessage(f"{what} has an invalid host: {host!r}")
    return value


def split_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def amount(value: object, what: str = "by") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessage(f"{what!r} must be an integer")
    if not 1 <= value <= MAX_AMOUNT:
        raise MalformedMessage(f"{what!r} must be from 1 to {MAX_AMOUNT}")
    return value


def _count(value: object, what: str, most: int = MAX_SLOT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise MalformedMessage(f"{what} must be an integer from 0 to {most}")
    return value


def _generation(value: object, what: str) -> int:
    return _count(value, what, MAX_GENERATION)


def _token(value: object, what: str) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise MalformedMessage(f"{what} must be a short string of [A-Za-z0-9_.:/-]")
    return value


# JSON bodies.


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """
    Build a JSON object, refusing a key given twice: C{{"by":1,"by":1000}}
    means nothing certain, and json.loads would silently keep the last.
    """
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedMessage(f"field {key!r} appears more than once")
        obj[key] = value
    return obj


def json_object(body: bytes, *, optional: bool = False) -> dict[str, Any]:
    """
    Decode a request body that must be a JSON object.

    @param optional: an empty body stands for C{{}}.
    """
    if optional and not body.strip():
        return {}
    try:
        value = json.loads(body, object_pairs_hook=_no_duplicates)
    except MalformedMessage:
        raise
    except (ValueError, RecursionError):
        raise MalformedMessage("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedMessage("body must be a JSON object")
    return value


def only(obj: Mapping[str, Any], *allowed: str) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise MalformedMessage(f"unknown field(s): {', '.join(extra)}")


def amount_body(body: bytes) -> int:
    """
    The body of an increment or decrement: empty, or C{{"by": n}}.
    """
    if not body:  # the usual case, on the hot path
        return 1
    obj = json_object(body, optional=True)
    only(obj, "by")
    return amount(obj.get("by", 1))


def batch_body(body: bytes, keyed: bool = False) -> dict[str, int]:
    """
    The body of a batched write (POST /counters): C{{"name": n, ...}}, each
    n a non-zero integer (negative: a decrement) of at most L{MAX_AMOUNT} in
    size, at least one counter; at most L{MAX_BATCH} if C{keyed}.
    """
    obj = json_object(body)
    if not obj:
        raise MalformedMessage("a batch must name at least one counter")
    if keyed and len(obj) > MAX_BATCH:
        # Peers refuse a key entry of more writes (L{_entry}): a keyed batch
        # past it would be counted here and never replicate.
        raise MalformedMessage(f"a batch with an Idempotency-Key may change at most {MAX_BATCH} counters")
    for name, value in obj.items():
        counter_name(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= abs(value) <= MAX_AMOUNT:
            raise MalformedMessage(
                f"the amount for {name!r} must be a non-zero integer from -{MAX_AMOUNT} to {MAX_AMOUNT}"
            )
    return obj


#: The most peers a write may ask to wait for (?wait=N).
MAX_WAIT = 1000


def write_concern(values: list[bytes] | None) -> int | str | None:
    """
    The C{wait} query parameter of a write: None (absent), a number of
    peers from 0 to L{MAX_WAIT}, or C{"all"} (every peer live at the time).
    """
    if values is None:
        return None
    if len(values) != 1:
        raise MalformedMessage("give 'wait' at most once")
    value = values[0].decode("ascii", "replace")
    if value == "all":
        return value
    if not value.isdecimal() or len(value) > len(str(MAX_WAIT)) or int(value) > MAX_WAIT:
        raise MalformedMessage(f"'wait' must be a number of peers from 0 to {MAX_WAIT}, or 'all'")
    return int(value)


#: The longest Idempotency-Key accepted.
MAX_KEY = 128
#: The most idempotency keys one sync message may carry.
MAX_SYNC_KEYS = 1_000_000


def idempotency_key(values: list[bytes] | None) -> str | None:
    """
    The C{Idempotency-Key} request header: None (absent), or the key, 1 to
    L{MAX_KEY} printable ASCII characters.  The draft makes it a structured
    field string (C{"..."}); a bare value is taken as it is.
    """
    if not values:
        return None
    if len(values) != 1:
        raise MalformedMessage("give the Idempotency-Key header at most once")
    raw = values[0]
    if len(raw) >= 2 and raw[:1] == b'"' and raw[-1:] == b'"':
        raw = raw[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
    if not 1 <= len(raw) <= MAX_KEY or not all(0x20 <= c <= 0x7E for c in raw):
        raise MalformedMessage(f"an Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters")
    return raw.decode("ascii")


def _key(value: object) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_KEY
        or not all(" " <= c <= "~" for c in value)
    ):
        raise MalformedMessage(f"an idempotency key must be 1 to {MAX_KEY} printable ASCII characters")
    return value


def encode_keys(keys: KeyState) -> dict[str, Any]:
    """
    C{{key: {"e": {replica: [at, digest, [[counter, amount, count], ...]]},
    "s": {loser: [settler, ...]}}}}.
    """
    return {
        key: {
            "e": {r: [e.at, e.digest, [list(w) for w in e.writes]] for r, e in rec.entries.items()},
            "s": {loser: sorted(settlers) for loser, settlers in rec.settled.items()},
        }
        for key, rec in keys.items()
    }


def _entry(value: object) -> Entry:
    if not isinstance(value, list) or len(value) != 3:
        raise MalformedMessage("each key entry must be [at, digest, writes]")
    at, digest, writes = value
    at = _time(at, "a key entry's time")
    if not isinstance(digest, str) or len(digest) > 128:
        raise MalformedMessage("a key entry's digest must be a short string")
    if not isinstance(writes, list) or not 1 <= len(writes) <= MAX_BATCH:
        raise MalformedMessage(f"a key entry has 1 to {MAX_BATCH} writes")
    out = []
    for w in writes:
        if not isinstance(w, list) or len(w) != 3:
            raise MalformedMessage("each write of a key entry must be [counter, amount, count]")
        name, amt, count = w
        counter_name(name)
        # The count is a value a write was answered with: MIN_VALUE too.
        for v in (amt, count):
            if isinstance(v, bool) or not isinstance(v, int) or not MIN_VALUE <= v <= MAX_SLOT:
                raise MalformedMessage("a key entry's amounts and counts must be 64-bit integers")
        out.append((name, amt, count))
    return Entry(at, digest, tuple(out))


def decode_keys(value: object) -> dict[str, Record]:
    if not isinstance(value, dict) or len(value) > MAX_SYNC_KEYS:
        raise MalformedMessage("'keys' must be an object of idempotency keys")
    out: dict[str, Record] = {}
    for key, rec in value.items():
        _key(key)
        if not isinstance(rec, dict) or set(rec) - {"e", "s"}:
            raise MalformedMessage('each idempotency key must be {"e": ..., "s": ...}')
        entries, settled = rec.get("e", {}), rec.get("s", {})
        if not isinstance(entries, dict) or not isinstance(settled, dict) or not entries:
            raise MalformedMessage("a key's 'e' and 's' must be objects, 'e' not empty")
        record = Record({_token(r, "a replica id"): _entry(e) for r, e in entries.items()}, {})
        for loser, settlers in settled.items():
            _token(loser, "a replica id")
            if not isinstance(settlers, list) or len(settlers) > 64:
                raise MalformedMessage("a key's settlers must be a list of replica ids")
            record.settled[loser] = {_token(s, "a replica id") for s in settlers}
        out[key] = record
    return out


#: The most counters one batched write may change.
MAX_BATCH = 1000


def id_body(body: bytes) -> str:
    """
    The body of /register and /remove-peer: C{{"id": "HOST:PORT"}}.
    """
    obj = json_object(body)
    only(obj, "id")
    if "id" not in obj:
        raise MalformedMessage("missing field 'id'")
    return address(obj["id"], "'id'")


def encode_state(state: State) -> dict[str, dict[str, list[int]]]:
    return {name: {r: [p, n] for r, (p, n) in replicas.items()} for name, replicas in state.items()}


def decode_state(value: object) -> dict[str, dict[str, Slot]]:
    if not isinstance(value, dict):
        raise MalformedMessage("'state' must be an object of counters")
    out: dict[str, dict[str, Slot]] = {}
    for name, replicas in value.items():
        counter_name(name)
        if not isinstance(replicas, dict):
            raise MalformedMessage("each counter in 'state' must be an object of replicas")
        slots: dict[str, Slot] = {}
        for replica, slot in replicas.items():
            _token(replica, "a replica id")
            if not isinstance(slot, list) or len(slot) != 2:
                raise MalformedMessage("each slot must be [P, N]")
            slots[replica] = (_count(slot[0], "P"), _count(slot[1], "N"))
        out[name] = slots
    return out


@dataclass(frozen=True)
class Sync:
    """
    A peer's state, pushed to us (POST /sync), or its reply.

    @ivar reply: the sender wants our whole state back (anti-entropy).
    """

    sender: str
    incarnation: str
    cluster: str
    state: State
    members: tuple[str, ...] = ()
    reply: bool = False
    rumors: tuple[Rumor, ...] = ()
    keys: KeyState = field(default_factory=dict)


@dataclass(frozen=True)
class LegacySync:
    """
    The original's C{{"count": N}}: raise this node's count to at least N.
    """

    count: int


def decode_sync(body: bytes) -> Sync | LegacySync:
    obj = json_object(body)
    if "count" in obj and "state" not in obj:
        only(obj, "count")
        count = obj["count"]
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_AMOUNT:
            raise MalformedMessage(f"'count' must be an integer from 0 to {MAX_AMOUNT}")
        return LegacySync(count)
    return sync_from_json(obj)


def sync_from_json(obj: object) -> Sync:
    if not isinstance(obj, dict):
        raise MalformedMessage("a sync message must be a JSON object")
    only(obj, "from", "incarnation", "cluster", "state", "members", "reply", "rumors", "keys")
    for key in ("from", "incarnation", "cluster", "state"):
        if key not in obj:
            raise MalformedMessage(f"missing field {key!r}")
    members = obj.get("members", [])
    if not isinstance(members, list) or len(members) > MAX_MEMBERS:
        raise MalformedMessage(f"'members' must be a list of at most {MAX_MEMBERS} addresses")
    reply = obj.get("reply", False)
    if not isinstance(reply, bool):
        raise MalformedMessage("'reply' must be true or false")
    return Sync(
        sender=address(obj["from"], "'from'"),
        incarnation=_token(obj["incarnation"], "'incarnation'"),
        cluster=_token(obj["cluster"], "'cluster'"),
        state=decode_state(obj["state"]),
        members=tuple(address(m, "a member") for m in members),
        reply=reply,
        rumors=decode_rumors(obj.get("rumors", [])),
        keys=decode_keys(obj.get("keys", {})),
    )


def encode_sync(msg: Sync) -> dict[str, Any]:
    out = {
        "from": msg.sender,
        "incarnation": msg.incarnation,
        "cluster": msg.cluster,
        "state": encode_state(msg.state),
        "members": list(msg.members),
        "reply": msg.reply,
        "rumors": encode_rumors(msg.rumors),
    }
    if msg.keys:
        out["keys"] = encode_keys(msg.keys)
    return out


# Digest anti-entropy (POST /digest).


@dataclass(frozen=True)
class Digest:
    """
    A peer's summary of its state (see L{dcounter.digest}), opening an
    anti-entropy round: the receiver answers with a L{DigestReply}.
    """

    sender: str
    incarnation: str
    cluster: str
    digest: bytes
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class DigestReply:
    """
    The answer to a L{Digest}: the buckets whose digests differ, and the
    answering node's state in those buckets.

    @ivar keys: the L{keys_digest} of the answering node's idempotency keys
        ("" for none): where it differs from the asker's, the asker falls
        back to a whole-state push-pull (keys included) for the round.
    """

    sender: str
    incarnation: str
    cluster: str
    buckets: tuple[int, ...]
    state: State
    members: tuple[str, ...] = ()
    keys: str = ""
    #: The asker's C{keys_before}, echoed (None if it gave none: then
    #: C{keys} covers every key, as from a node older than this field).
    keys_before: float | None = None
    #: Keys with an entry after C{keys_before} that write a counter of
    #: C{state}: they travel with those slots, whole.
    recent: KeyState = field(default_factory=dict)


#: The length of a L{keys_digest}, in hexadecimal digits.
KEYS_DIGEST_SIZE = 32


def keys_digest(keys: KeyState) -> str:
    """
    A small digest of a whole map of idempotency keys as it travels, the
    same on every node that holds the same keys; "" for none.
    """
    if not keys:
        return ""
    text = json.dumps(encode_keys(keys), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEYS_DIGEST_SIZE]


def _members(obj: Mapping[str, Any]) -> tuple[str, ...]:
    members = obj.get("members", [])
    if not isinstance(members, list) or len(members) > MAX_MEMBERS:
        raise MalformedMessage(f"'members' must be a list of at most {MAX_MEMBERS} addresses")
    return tuple(address(m, "a member") for m in members)


def _required(obj: Mapping[str, Any], *keys: str) -> None:
    for key in keys:
        if key not in obj:
            raise MalformedMessage(f"missing field {key!r}")


def decode_digest(body: bytes, size: int) -> Digest:
    """
    Decode a L{Digest} whose summary must be C{size} bytes.
    """
    obj = json_object(body)
    only(obj, "from", "incarnation", "cluster", "digest", "members")
    _required(obj, "from", "incarnation", "cluster", "digest")
    raw = obj["digest"]
    if not isinstance(raw, str) or len(raw) > 4 * size:
        raise MalformedMessage(f"'digest' must be {size} bytes in base64")
    try:
        digest = base64.b64decode(raw, validate=True)
    except ValueError:
        raise MalformedMessage("'digest' is not valid base64") from None
    if len(digest) != size:
        raise MalformedMessage(f"'digest' must be {size} bytes in base64")
    return Digest(
        sender=address(obj["from"], "'from'"),
        incarnation=_token(obj["incarnation"], "'incarnation'"),
        cluster=_token(obj["cluster"], "'cluster'"),
        digest=digest,
        members=_members(obj),
    )


def encode_digest(msg: Digest) -> dict[str, Any]:
    return {
        "from": msg.sender,
        "incarnation": msg.incarnation,
        "cluster": msg.cluster,
        "digest": base64.b64encode(msg.digest).decode(),
        "members": list(msg.members),
    }


def decode_digest_reply(body: bytes, buckets: int) -> DigestReply:
    """
    Decode a L{DigestReply} naming buckets from 0 to C{buckets} - 1.
    """
    obj = json_object(body)
    only(
        obj, "from", "incarnation", "cluster", "buckets", "state", "members", "keys", "keys_before", "recent"
    )
    _required(obj, "from", "incarnation", "cluster", "buckets", "state")
    before = obj.get("keys_before")
    if before is not None:
        before = _time(before, "'keys_before'")
    keys = obj.get("keys", "")
    if not isinstance(keys, str) or not re.fullmatch(f"(?:[0-9a-f]{{{KEYS_DIGEST_SIZE}}})?", keys):
        raise MalformedMessage(f"'keys' must be {KEYS_DIGEST_SIZE} hexadecimal digits")
    listed = obj["buckets"]
    if (
        not isinstance(listed, list)
        or len(listed) > buckets
        or not all(type(b) is int and 0 <= b < buckets for b in listed)
    ):
        raise MalformedMessage(f"'buckets' must be a list of bucket numbers from 0 to {buckets - 1}")
    return DigestReply(
        sender=address(obj["from"], "'from'"),
        incarnation=_token(obj["incarnation"], "'incarnation'"),
        cluster=_token(obj["cluster"], "'cluster'"),
        buckets=tuple(listed),
        state=decode_state(obj["state"]),
        members=_members(obj),
        keys=keys,
        keys_before=before,
        recent=decode_keys(obj["recent"]) if "recent" in obj else {},
    )


def encode_digest_reply(msg: DigestReply) -> dict[str, Any]:
    out: dict[str, Any] = {
        "from": msg.sender,
        "incarnation": msg.incarnation,
        "cluster": msg.cluster,
        "buckets": list(msg.buckets),
        "state": encode_state(msg.state),
        "members": list(msg.members),
    }
    if msg.keys:
        out["keys"] = msg.keys
    if msg.keys_before is not None:
        out["keys_before"] = msg.keys_before
    if msg.recent:
        out["recent"] = encode_keys(msg.recent)
    return out


def _time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e12:
        raise MalformedMessage(f"{what} must be a number of seconds")
    return float(value)


def keys_before(values: list[bytes] | None) -> float | None:
    """
    The C{keys_before} query parameter of a digest (POST /digest): None
    (absent), or a time in seconds.
    """
    if values is None:
        return None
    if len(values) != 1:
        raise MalformedMessage("give 'keys_before' at most once")
    try:
        value = float(values[0].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise MalformedMessage("'keys_before' must be a number of seconds") from None
    return _time(value, "'keys_before'")


@dataclass(frozen=True)
class Hello:
    """
    What a node says of itself in GET /health: enough for a peer to admit it.
    """

    node_id: str
    incarnation: str
    cluster: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: the id of the cluster key whose MAC the answer carried; None if it
    #: was not signed.  Set by the peer client, never decoded from JSON.
    signed_by: str | None = None
    #: SWIM: the node's generation (raised to refute a suspicion of this
    #: boot), and the rumors it piggybacks on its answer.
    generation: int = 0
    rumors: tuple[Rumor, ...] = ()


def decode_hello(body: bytes) -> Hello:
    obj = json_object(body)
    if obj.get("status") != "ok":
        raise MalformedMessage("not a healthy dcounter node")
    return Hello(
        node_id=address(obj.get("node_id"), "'node_id'"),
        incarnation=_token(obj.get("incarnation"), "'incarnation'"),
        cluster=_token(obj.get("cluster"), "'cluster'"),
        generation=_generation(obj.get("generation", 0), "'generation'"),
        rumors=decode_rumors(obj.get("rumors", [])),
    )


def encode_hello(hello: Hello) -> dict[str, Any]:
    return {
        "status": "ok",
        "node_id": hello.node_id,
        "incarnation": hello.incarnation,
        "cluster": hello.cluster,
        "generation": hello.generation,
        "rumors": encode_rumors(hello.rumors),
        **hello.extra,
    }


# SWIM membership rumors, piggybacked on probes' answers, indirect probes and
# syncs.

#: The most rumors one message carries.
MAX_RUMORS = 64
RUMOR_KINDS = ("alive", "suspect", "dead")


@dataclass(frozen=True)
class Rumor:
    """
    What C{source} says of C{node}: that it is alive, suspect or dead, at
    its boot C{incarnation} and C{generation} (SWIM's incarnation number:
    a node raises it to refute a suspicion of itself).
    """

    kind: str
    node: str
    incarnation: str
    generation: int
    source: str


def decode_rumors(value: object) -> tuple[Rumor, ...]:
    if not isinstance(value, list) or len(value) > MAX_RUMORS:
        raise MalformedMessage(f"'rumors' must be a list of at most {MAX_RUMORS} rumors")
    rumors = []
    for r in value:
        if not isinstance(r, dict):
            raise MalformedMessage("a rumor must be a JSON object")
        only(r, "kind", "node", "incarnation", "generation", "source")
        kind = r.get("kind")
        if kind not in RUMOR_KINDS:
            raise MalformedMessage(f"a rumor's 'kind' must be one of {', '.join(RUMOR_KINDS)}")
        rumors.append(
            Rumor(
                kind=kind,
                node=address(r.get("node"), "a rumor's 'node'"),
                incarnation=_token(r.get("incarnation"), "a rumor's 'incarnation'"),
                generation=_generation(r.get("generation"), "a rumor's 'generation'"),
                source=address(r.get("source"), "a rumor's 'source'"),
            )
        )
    return tuple(rumors)


def encode_rumors(rumors: tuple[Rumor, ...] | list[Rumor]) -> list[dict[str, Any]]:
    return [
        {
            "kind": r.kind,
            "node": r.node,
            "incarnation": r.incarnation,
            "generation": r.generation,
            "source": r.source,
        }
        for r in rumors
    ]


@dataclass(frozen=True)
class ProbeRequest:
    """
    SWIM's indirect probe (POST /probe): C{sender} asks us to probe
    C{target} for it, and piggybacks its rumors.
    """

    sender: str
    target: str
    rumors: tuple[Rumor, ...] = ()


def decode_probe_request(body: bytes) -> ProbeRequest:
    obj = json_object(body)
    only(obj, "from", "target", "rumors")
    return ProbeRequest(
        sender=address(obj.get("from"), "'from'"),
        target=address(obj.get("target"), "'target'"),
        rumors=decode_rumors(obj.get("rumors", [])),
    )


def encode_probe_request(msg: ProbeRequest) -> dict[str, Any]:
    return {"from": msg.sender, "target": msg.target, "rumors": encode_rumors(msg.rumors)}


@dataclass(frozen=True)
class ProbeAnswer:
    """
    The answer to an indirect probe: C{ack} if the target answered as
    itself in time, else a nack (Lifeguard: the helper is alive, so the
    asker is not the slow one); and the helper's rumors.
    """

    ack: bool
    rumors: tuple[Rumor, ...] = ()


def decode_probe_answer(body: bytes) -> ProbeAnswer:
    obj = json_object(body)
    only(obj, "ack", "rumors")
    ack = obj.get("ack")
    if not isinstance(ack, bool):
        raise MalformedMessage("'ack' must be true or false")
    return ProbeAnswer(ack=ack, rumors=decode_rumors(obj.get("rumors", [])))


def encode_probe_answer(msg: ProbeAnswer) -> dict[str, Any]:
    return {"ack": msg.ack, "rumors": encode_rumors(msg.rumors)}


# Discovery datagrams.

#: A discovery datagram larger than this is dropped unread.
MAX_DATAGRAM = 1024
_ANNOUNCE_VERSION = 1
_KINDS = ("announce", "reply")


@dataclass(frozen=True)
class Announcement:
    """
    A node saying where it is, by UDP.  C{kind} is C{"announce"} (broadcast,
    answered by nodes that do not know the sender yet) or C{"reply"}
    (unicast, never answered).
    """

    cluster: str
    node_id: str
    http: str
    incarnation: str
    kind: str = "announce"


def encode_announcement(a: Announcement) -> bytes:
    data = json.dumps(
        {
            "dcounter": _ANNOUNCE_VERSION,
            "kind": a.kind,
            "cluster": a.cluster,
            "node_id": a.node_id,
            "http": a.http,
            "incarnation": a.incarnation,
        },
        separators=(",", ":"),
    ).encode()
    if len(data) > MAX_DATAGRAM:
        raise MalformedMessage("announcement too large")
    return data


def decode_announcement(data: bytes) -> Announcement:
    if len(data) > MAX_DATAGRAM:
        raise MalformedMessage(f"datagram of {len(data)} bytes, more than {MAX_DATAGRAM}")
    obj = json_object(data)
    version = obj.get("dcounter")
    # type(): true and 1.0 are equal to 1 in Python, but are not version 1.
    if type(version) is not int or version != _ANNOUNCE_VERSION:
        raise MalformedMessage("not a dcounter announcement of a known version")
    only(obj, "dcounter", "kind", "cluster", "node_id", "http", "incarnation")
    kind = obj.get("kind")
    if kind not in _KINDS:
        raise MalformedMessage(f"'kind' must be one of {', '.join(_KINDS)}")
    return Announcement(
        cluster=_token(obj.get("cluster"), "'cluster'"),
        node_id=address(obj.get("node_id"), "'node_id'"),
        http=address(obj.get("http"), "'http'"),
        incarnation=_token(obj.get("incarnation"), "'incarnation'"),
        kind=kind,
    )


# Signatures: what a signed message carries (see dcounter.keyring).

#: The HTTP header of a signed request or response.
AUTH_HEADER = "X-Dcounter-Auth"
#: A signed datagram: this prefix, the Auth, a newline, the announcement.
SIGNED_DATAGRAM = b"dcounter-signed "
_HEX8 = re.compile(r"[0-9a-f]{8}\Z")
_HEX16 = re.compile(r"[0-9a-f]{16}\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_DECIMAL = re.compile(r"[0-9]{1,20}\Z")


@dataclass(frozen=True)
class Auth:
    """
    The signature of a message: key id, sender's node id, the sender's boot
    (random, new at each start), timestamp (ms), sequence number (from 1 in
    each boot) and MAC (hex).
    """

    key_id: str
    sender: str
    boot: str
    timestamp: int
    seq: int
    mac: str


_AUTH_FIELDS = {"kid", "from", "boot", "ts", "seq", "mac"}
_AUTH_FORMAT = "a signature is kid=,from=,boot=,ts=,seq=,mac=, each once"


def encode_auth(auth: Auth) -> str:
    return (
        f"kid={auth.key_id},from={auth.sender},boot={auth.boot},"
        f"ts={auth.timestamp},seq={auth.seq},mac={auth.mac}"
    )


def decode_auth(value: str | bytes) -> Auth:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedMessage("a signature is ASCII") from None
    if len(value) > 512:
        raise MalformedMessage("signature too long")
    fields: dict[str, str] = {}
    for item in value.split(","):
        key, sep, val = item.partition("=")
        if not sep or key in fields:
            raise MalformedMessage(_AUTH_FORMAT)
        fields[key] = val
    if set(fields) != _AUTH_FIELDS:
        raise MalformedMessage(_AUTH_FORMAT)
    if not _HEX8.match(fields["kid"]) or not _HEX16.match(fields["boot"]) or not _HEX64.match(fields["mac"]):
        raise MalformedMessage("a signature's kid, boot and mac are 8, 16 and 64 lower-case hex digits")
    if not _DECIMAL.match(fields["ts"]) or not _DECIMAL.match(fields["seq"]):
        raise MalformedMessage("a signature's ts and seq are decimal integers")
    return Auth(
        key_id=fields["kid"],
        sender=address(fields["from"], "a signature's 'from'"),
        boot=fields["boot"],
        timestamp=int(fields["ts"]),
        seq=int(fields["seq"]),
        mac=fields["mac"],
    )


def encode_signed_datagram(auth: Auth, payload: bytes) -> bytes:
    data = SIGNED_DATAGRAM + encode_auth(auth).encode() + b"\n" + payload
    if len(data) > MAX_DATAGRAM:
        raise MalformedMessage("announcement too large")
    return data


def decode_signed_datagram(data: bytes) -> tuple[Auth | None, bytes]:
    """
    Split a datagram into its signature (None if it has none) and payload.
    The payload is not decoded: it is checked first.
    """
    if len(data) > MAX_DATAGRAM:
        raise MalformedMessage(f"datagram of {len(data)} bytes, more than {MAX_DATAGRAM}")
    if not data.startswith(SIGNED_DATAGRAM):
        return None, data
    head, sep, payload = data[len(SIGNED_DATAGRAM) :].partition(b"\n")
    if not sep:
        raise MalformedMessage("a signed datagram has a newline after its signature")
    return decode_auth(head), payload
