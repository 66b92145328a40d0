"""
Tests for dcounter.wire: every decoder takes good input and refuses bad input
with MalformedMessage, and nothing else.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcounter import wire
from dcounter.counter import MAX_SLOT
from dcounter.wire import (
    MAX_AMOUNT,
    MAX_DATAGRAM,
    MAX_MEMBERS,
    MAX_NAME,
    Announcement,
    Hello,
    LegacySync,
    MalformedMessage,
    Sync,
)


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()


GOOD_SYNC = {
    "from": "10.0.0.2:8080",
    "incarnation": "a1b2c3",
    "cluster": "dcounter",
    "state": {"default": {"10.0.0.2:8080/a1b2c3": [3, 1]}},
    "members": ["10.0.0.3:8080"],
    "reply": True,
}
GOOD_ANNOUNCEMENT = {
    "dcounter": 1,
    "kind": "announce",
    "cluster": "dcounter",
    "node_id": "10.0.0.2:8080",
    "http": "10.0.0.2:8080",
    "incarnation": "a1b2c3",
}
GOOD_HELLO = {"status": "ok", "node_id": "10.0.0.2:8080", "incarnation": "a1b2c3", "cluster": "dcounter"}


def with_field(base: dict, key: str, value: object) -> dict:
    return {**base, key: value}


def without(base: dict, key: str) -> dict:
    return {k: v for k, v in base.items() if k != key}


# Strategies for valid messages.

hosts = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,30}[A-Za-z0-9])?", fullmatch=True)
addresses = st.builds(lambda h, p: f"{h}:{p}", hosts, st.integers(1, 65535))
tokens = st.from_regex(r"[A-Za-z0-9_.:/\[\]-]{1,40}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,30}", fullmatch=True)
counts = st.integers(0, MAX_SLOT)
states = st.dictionaries(names, st.dictionaries(tokens, st.tuples(counts, counts), max_size=4), max_size=4)
syncs = st.builds(
    Sync,
    sender=addresses,
    incarnation=tokens,
    cluster=tokens,
    state=states,
    members=st.lists(addresses, max_size=5).map(tuple),
    reply=st.booleans(),
)
hellos = st.builds(Hello, node_id=addresses, incarnation=tokens, cluster=tokens)
announcements = st.builds(
    Announcement,
    cluster=tokens,
    node_id=addresses,
    http=addresses,
    incarnation=tokens,
    kind=st.sampled_from(["announce", "reply"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


# Round trips.


@given(syncs)
def test_sync_round_trip(msg):
    """encode_sync then decode_sync (through JSON bytes) gives the same Sync."""
    assert wire.decode_sync(dumps(wire.encode_sync(msg))) == msg
    assert wire.sync_from_json(json.loads(dumps(wire.encode_sync(msg)))) == msg


@given(hellos)
def test_hello_round_trip(hello):
    """encode_hello then decode_hello gives the same Hello."""
    assert wire.decode_hello(dumps(wire.encode_hello(hello))) == hello


def test_hello_extra_fields_are_sent_and_ignored():
    """Extra /health fields are encoded, and a decoder tolerates them."""
    hello = Hello("10.0.0.2:8080", "inc", "dcounter", extra={"uptime": 1.5, "peers": {"alive": 1}})
    encoded = wire.encode_hello(hello)
    assert encoded["uptime"] == 1.5 and encoded["status"] == "ok"
    assert wire.decode_hello(dumps(encoded)) == Hello("10.0.0.2:8080", "inc", "dcounter")


@given(announcements)
def test_announcement_round_trip(announcement):
    """encode_announcement then decode_announcement gives the same Announcement."""
    data = wire.encode_announcement(announcement)
    assert len(data) <= MAX_DATAGRAM
    assert wire.decode_announcement(data) == announcement


def test_encode_announcement_refuses_oversized():
    """An announcement that would not fit a datagram is refused when encoded."""
    with pytest.raises(MalformedMessage):
        wire.encode_announcement(Announcement("x" * MAX_DATAGRAM, "a:1", "a:2", "inc"))


@given(states)
def test_state_round_trip(state):
    """encode_state then decode_state gives the same state, slots as tuples."""
    assert wire.decode_state(json.loads(json.dumps(wire.encode_state(state)))) == state


# Fuzzing: only MalformedMessage escapes.


@given(st.binary(max_size=2 * MAX_DATAGRAM))
def test_decode_announcement_of_arbitrary_bytes(data):
    """Arbitrary bytes decode or raise MalformedMessage, nothing else."""
    try:
        assert isinstance(wire.decode_announcement(data), Announcement)
    except MalformedMessage:
        pass


@given(st.binary(max_size=2000))
def test_decode_sync_of_arbitrary_bytes(data):
    """Arbitrary bytes decode or raise MalformedMessage, nothing else."""
    try:
        assert isinstance(wire.decode_sync(data), (Sync, LegacySync))
    except MalformedMessage:
        pass


@given(json_values)
def test_decoders_of_arbitrary_json(value):
    """Arbitrary JSON values, as bytes or parsed, raise only MalformedMessage."""
    for decode, arg in [
        (wire.sync_from_json, value),
        (wire.decode_state, value),
        (wire.decode_sync, dumps(value)),
        (wire.decode_hello, dumps(value)),
        (wire.decode_announcement, dumps(value)),
        (wire.amount_body, dumps(value)),
        (wire.id_body, dumps(value)),
    ]:
        try:
            decode(arg)
        except MalformedMessage:
            pass


@given(st.sampled_from(sorted(GOOD_SYNC)), json_values)
def test_sync_with_any_field_value(key, value):
    """A good sync message with one field replaced by any JSON value raises only MalformedMessage."""
    try:
        msg = wire.sync_from_json(with_field(GOOD_SYNC, key, value))
    except MalformedMessage:
        return
    assert isinstance(msg, Sync)


@given(st.sampled_from(sorted(GOOD_ANNOUNCEMENT)), json_values)
def test_announcement_with_any_field_value(key, value):
    """A good announcement with one field replaced by any JSON value raises only MalformedMessage."""
    try:
        msg = wire.decode_announcement(dumps(with_field(GOOD_ANNOUNCEMENT, key, value)))
    except MalformedMessage:
        return
    assert isinstance(msg, Announcement)


@given(json_values, json_values)
def test_state_with_any_slot(replica_value, slot_value):
    """Any JSON as a counter's replica map or a slot raises only MalformedMessage."""
    for state in ({"c": replica_value}, {"c": {"r": slot_value}}):
        try:
            wire.decode_state(state)
        except MalformedMessage:
            pass


@given(st.text(max_size=40))
def test_address_of_any_text(text):
    """address() returns its input or raises MalformedMessage for any text."""
    try:
        assert wire.address(text) == text
    except MalformedMessage:
        pass


@given(
    st.text(
        st.characters(categories=["Nd", "No", "Nl", "Zs", "Cc"]) | st.sampled_from("0123456789+-_"),
        max_size=8,
    )
)
def test_address_port_of_any_text(port):
    """Any text as the port is a good decimal port or MalformedMessage."""
    try:
        wire.address(f"host:{port}")
    except MalformedMessage:
        return
    assert port.isascii() and port.isdigit() and 1 <= int(port) <= 65535


# Scalars.


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.1:8080",
        "node-1.example.com:1",
        "localhost:65535",
        "a:80",
        "a" * 253 + ":80",
    ],
)
def test_good_addresses(value):
    """Hostnames and IPv4 addresses with ports 1-65535 are addresses."""
    assert wire.address(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "a:0",
        "a:65536",
        "a:08",
        "a:080",
        "a:-1",
        "a:+80",
        "a: 80",
        "a:80 ",
        "a:",
        "a",
        "80",
        ":80",
        "a:8o",
        "a:²",  # a Unicode digit that int() refuses
        "a:¹²",
        "a:٨٠",  # Arabic-Indic digits
        "a:８０",  # fullwidth digits
        "a b:80",
        "a_b:80",
        "a/b:80",
        "-a:80",
        "a-:80",
        "a.:80",
        "évil:80",
        "a\n:80",
        "a:80\n",
        "::1:80",
        "[::1:80",
        "[zz::1]:80",
        "[]:80",
        "[::1]:9089",  # nodes serve IPv4 only: refused here, not as a 502 later
        "[fe80::1]:80",
        "[::ffff:10.0.0.1]:80",
        "a" * 254 + ":80",
        "a" * 300 + ":80",
        "",
    ],
)
def test_bad_addresses(value):
    """Bad hosts and ports are refused with MalformedMessage."""
    with pytest.raises(MalformedMessage):
        wire.address(value)


@pytest.mark.parametrize("value", [None, 80, True, 1.5, b"a:80", ["a:80"], {"a": 80}])
def test_non_string_addresses(value):
    """An address must be a string."""
    with pytest.raises(MalformedMessage):
        wire.address(value)


def test_address_error_names_the_field():
    """The error text says which field was wrong."""
    with pytest.raises(MalformedMessage, match="'from'"):
        wire.address("nope", "'from'")


def test_split_address():
    """split_address gives host and integer port."""
    assert wire.split_address("10.0.0.1:8080") == ("10.0.0.1", 8080)
    assert wire.split_address("node-1:80") == ("node-1", 80)


@pytest.mark.parametrize("value", ["default", "a", "A9", "x.y:z-w_v", "9" * MAX_NAME])
def test_good_counter_names(value):
    """Letters, digits and _ . : - starting with a letter or digit, up to MAX_NAME."""
    assert wire.counter_name(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "-a", "_a", ".a", "a b", "a/b", "a\n", "é", "a" * (MAX_NAME + 1), None, 1, True, ["a"]],
)
def test_bad_counter_names(value):
    """Anything else is refused."""
    with pytest.raises(MalformedMessage):
        wire.counter_name(value)


@pytest.mark.parametrize("value", [1, 2, MAX_AMOUNT])
def test_good_amounts(value):
    assert wire.amount(value) == value


@pytest.mark.parametrize("value", [0, -1, MAX_AMOUNT + 1, True, False, 1.0, "1", None, [1]])
def test_bad_amounts(value):
    """Amounts are ints from 1 to MAX_AMOUNT; bools and floats are not ints."""
    with pytest.raises(MalformedMessage):
        wire.amount(value)


# JSON bodies.


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"{", b"\xff\xfe\x00", b"[1]", b"1", b'"x"', b"null", b"[" * 100000]
)
def test_json_object_refuses_non_objects(body):
    """Invalid JSON, too-deep JSON and JSON that is not an object are refused."""
    with pytest.raises(MalformedMessage):
        wire.json_object(body)


def test_json_object_optional_empty_body():
    """With optional=True an empty or blank body stands for {}."""
    assert wire.json_object(b"", optional=True) == {}
    assert wire.json_object(b" \n", optional=True) == {}
    assert wire.json_object(b'{"a": 1}') == {"a": 1}


def test_only_names_unknown_fields():
    """only() refuses fields not allowed, naming them."""
    wire.only({"a": 1}, "a", "b")
    with pytest.raises(MalformedMessage, match="unknown field\\(s\\): x, y"):
        wire.only({"a": 1, "y": 2, "x": 3}, "a")


@pytest.mark.parametrize("body, expected", [(b"", 1), (b"  ", 1), (b"{}", 1), (b'{"by": 7}', 7)])
def test_amount_body(body, expected):
    """An increment body is empty (by 1) or {"by": n}."""
    assert wire.amount_body(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b'{"by": 0}',
        b'{"by": -3}',
        b'{"by": true}',
        b'{"by": 1.5}',
        b'{"by": 1e3}',
        b'{"by": "2"}',
        b'{"by": null}',
        dumps({"by": MAX_AMOUNT + 1}),
        b'{"by": 1, "extra": 2}',
        b"[1]",
        b"nope",
    ],
)
def test_bad_amount_bodies(body):
    with pytest.raises(MalformedMessage):
        wire.amount_body(body)


def test_id_body():
    """/register and /remove-peer take {"id": "HOST:PORT"}."""
    assert wire.id_body(b'{"id": "10.0.0.2:8080"}') == "10.0.0.2:8080"


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b'{"id": "evil"}', b'{"id": 8080}', b'{"id": "a:1", "x": 1}', b'{"ID": "a:1"}', b"[]"],
)
def test_bad_id_bodies(body):
    with pytest.raises(MalformedMessage):
        wire.id_body(body)


# Sync.


def test_decode_sync():
    """A good sync message decodes to a Sync with tuples for slots."""
    msg = wire.decode_sync(dumps(GOOD_SYNC))
    assert msg == Sync(
        sender="10.0.0.2:8080",
        incarnation="a1b2c3",
        cluster="dcounter",
        state={"default": {"10.0.0.2:8080/a1b2c3": (3, 1)}},
        members=("10.0.0.3:8080",),
        reply=True,
    )


def test_sync_defaults():
    """members and reply are optional."""
    msg = wire.sync_from_json(without(without(GOOD_SYNC, "members"), "reply"))
    assert msg.members == () and msg.reply is False


@pytest.mark.parametrize("count", [0, 1, MAX_AMOUNT])
def test_legacy_sync(count):
    """The original's {"count": N} decodes to LegacySync."""
    assert wire.decode_sync(dumps({"count": count})) == LegacySync(count)


@pytest.mark.parametrize(
    "body",
    [
        {"count": -1},
        {"count": MAX_AMOUNT + 1},  # room must remain to increment (issue 8)
        {"count": MAX_SLOT},
        {"count": MAX_SLOT + 1},
        {"count": 10**30},
        {"count": True},
        {"count": 1.0},
        {"count": "5"},
        {"count": None},
        {"count": 5, "extra": 1},
        {"count": 5, "state": {}},  # a sync message does not take 'count'
    ],
)
def test_bad_legacy_sync(body):
    """Legacy counts past 2^53-1 are refused: none may freeze the node's own slot."""
    with pytest.raises(MalformedMessage):
        wire.decode_sync(dumps(body))


@pytest.mark.parametrize("key", ["from", "incarnation", "cluster", "state"])
def test_sync_missing_field(key):
    with pytest.raises(MalformedMessage, match=key):
        wire.sync_from_json(without(GOOD_SYNC, key))


@pytest.mark.parametrize(
    "key, value",
    [
        ("from", "10.0.0.2:0"),
        ("from", "10.0.0.2:65536"),
        ("from", "10.0.0.2:08"),
        ("from", ":8080"),
        ("from", "bad host:80"),
        ("from", 8080),
        ("incarnation", ""),
        ("incarnation", "a b"),
        ("incarnation", "x" * (MAX_NAME + 1)),
        ("incarnation", 5),
        ("cluster", None),
        ("cluster", "évil"),
        ("state", []),
        ("state", "x"),
        ("state", None),
        ("members", "10.0.0.3:8080"),
        ("members", ["10.0.0.3:0"]),
        ("members", [None]),
        ("members", ["10.0.0.3:8080"] * (MAX_MEMBERS + 1)),
        ("members", {"10.0.0.3:8080": 1}),
        ("reply", 1),
        ("reply", 0),
        ("reply", "true"),
        ("reply", None),
        ("surprise", 1),
    ],
)
def test_sync_bad_field(key, value):
    """A sync message with one bad field is refused."""
    with pytest.raises(MalformedMessage):
        wire.sync_from_json(with_field(GOOD_SYNC, key, value))
    with pytest.raises(MalformedMessage):
        wire.decode_sync(dumps(with_field(GOOD_SYNC, key, value)))


@pytest.mark.parametrize("value", [None, [], "x", 1, True])
def test_sync_from_json_refuses_non_objects(value):
    with pytest.raises(MalformedMessage):
        wire.sync_from_json(value)


def test_sync_members_at_limit():
    """Exactly MAX_MEMBERS members are accepted."""
    msg = wire.sync_from_json(with_field(GOOD_SYNC, "members", ["10.0.0.3:8080"] * MAX_MEMBERS))
    assert len(msg.members) == MAX_MEMBERS


def test_decode_state_accepts_extremes():
    """Slots from 0 to MAX_SLOT and long names are accepted."""
    state = {"a" * MAX_NAME: {"r" * MAX_NAME: [0, MAX_SLOT]}, "b": {}}
    assert wire.decode_state(state) == {"a" * MAX_NAME: {"r" * MAX_NAME: (0, MAX_SLOT)}, "b": {}}


@pytest.mark.parametrize(
    "state",
    [
        {"c": {"r": [1]}},
        {"c": {"r": [1, 2, 3]}},
        {"c": {"r": (1, 2)}},  # only JSON lists are slots
        {"c": {"r": {"p": 1, "n": 2}}},
        {"c": {"r": [-1, 0]}},
        {"c": {"r": [0, -1]}},
        {"c": {"r": [MAX_SLOT + 1, 0]}},
        {"c": {"r": [0, MAX_SLOT + 1]}},
        {"c": {"r": [True, 0]}},
        {"c": {"r": [0, False]}},
        {"c": {"r": [1.0, 0]}},
        {"c": {"r": ["1", 0]}},
        {"c": {"r": [None, 0]}},
        {"c": {"": [1, 0]}},
        {"c": {"a b": [1, 0]}},
        {"c": {"r" * (MAX_NAME + 1): [1, 0]}},
        {"c": [["r", 1, 0]]},
        {"c": None},
        {"": {"r": [1, 0]}},
        {"-c": {"r": [1, 0]}},
        {"c/d": {"r": [1, 0]}},
        {"c" * (MAX_NAME + 1): {"r": [1, 0]}},
    ],
)
def test_decode_state_refuses(state):
    """Bad slots, replica ids and counter names are refused."""
    with pytest.raises(MalformedMessage):
        wire.decode_state(state)


@pytest.mark.parametrize("value", [None, [], "x", 1, True])
def test_decode_state_refuses_non_objects(value):
    with pytest.raises(MalformedMessage):
        wire.decode_state(value)


# Hello.


def test_decode_hello():
    assert wire.decode_hello(dumps(GOOD_HELLO)) == Hello("10.0.0.2:8080", "a1b2c3", "dcounter")


def test_decode_hello_of_original_node():
    """The original system's /health (no incarnation or cluster) is not a dcounter node."""
    with pytest.raises(MalformedMessage):
        wire.decode_hello(b'{"status": "ok", "node_id": "10.0.0.2:8080"}')


@pytest.mark.parametrize(
    "key, value",
    [
        ("status", "down"),
        ("status", True),
        ("status", None),
        ("node_id", "10.0.0.2"),
        ("node_id", "10.0.0.2:0"),
        ("node_id", None),
        ("incarnation", ""),
        ("incarnation", 1),
        ("cluster", "a b"),
        ("cluster", None),
    ],
)
def test_decode_hello_bad_field(key, value):
    with pytest.raises(MalformedMessage):
        wire.decode_hello(dumps(with_field(GOOD_HELLO, key, value)))


@pytest.mark.parametrize("key", sorted(GOOD_HELLO))
def test_decode_hello_missing_field(key):
    with pytest.raises(MalformedMessage):
        wire.decode_hello(dumps(without(GOOD_HELLO, key)))


# Announcements.


def test_decode_announcement():
    assert wire.decode_announcement(dumps(GOOD_ANNOUNCEMENT)) == Announcement(
        cluster="dcounter",
        node_id="10.0.0.2:8080",
        http="10.0.0.2:8080",
        incarnation="a1b2c3",
        kind="announce",
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("dcounter", 2),
        ("dcounter", 0),
        ("dcounter", "1"),
        ("dcounter", True),  # True == 1 in Python, but it is not version 1
        ("dcounter", 1.0),
        ("dcounter", None),
        ("kind", "hello"),
        ("kind", None),
        ("kind", ["announce"]),
        ("kind", "ANNOUNCE"),
        ("cluster", ""),
        ("cluster", 1),
        ("node_id", "evil.example"),
        ("node_id", "evil.example:0"),
        ("http", "10.0.0.2:65536"),
        ("http", "10.0.0.2:08"),
        ("http", None),
        ("incarnation", "a b"),
        ("extra", 1),
    ],
)
def test_decode_announcement_bad_field(key, value):
    with pytest.raises(MalformedMessage):
        wire.decode_announcement(dumps(with_field(GOOD_ANNOUNCEMENT, key, value)))


@pytest.mark.parametrize("key", sorted(GOOD_ANNOUNCEMENT))
def test_decode_announcement_missing_field(key):
    with pytest.raises(MalformedMessage):
        wire.decode_announcement(dumps(without(GOOD_ANNOUNCEMENT, key)))


def test_decode_announcement_size_limit():
    """A datagram over MAX_DATAGRAM is refused even if it is a good announcement."""
    data = dumps(GOOD_ANNOUNCEMENT)
    padded = data[:-1] + b" " * (MAX_DATAGRAM - len(data)) + b"}"
    assert len(padded) == MAX_DATAGRAM
    assert wire.decode_announcement(padded).node_id == "10.0.0.2:8080"
    with pytest.raises(MalformedMessage, match="more than"):
        wire.decode_announcement(padded[:-1] + b" }")


@pytest.mark.parametrize("data", [b"", b"\x00", b"[]", b"hello", b"{", "é".encode("latin-1")])
def test_decode_announcement_garbage(data):
    with pytest.raises(MalformedMessage):
        wire.decode_announcement(data)


@pytest.mark.parametrize(
    "body",
    [
        b'{"by":1,"by":1000}',
        b'{"id":"a:1","id":"b:2"}',
        b'{"from":"a:1","state":{"c":{"r":[1,0],"r":[9,0]}}}',
    ],
)
def test_duplicate_keys_are_refused(body):
    """A key given twice, at any depth, is a MalformedMessage naming it."""
    with pytest.raises(MalformedMessage, match="more than once"):
        wire.json_object(body)


# Signatures.

auths = st.builds(
    wire.Auth,
    key_id=st.from_regex(r"[0-9a-f]{8}", fullmatch=True),
    sender=addresses,
    boot=st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    timestamp=st.integers(0, 10**19),
    seq=st.integers(0, 10**19),
    mac=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
)


@given(auths)
def test_auth_round_trip(auth):
    assert wire.decode_auth(wire.encode_auth(auth)) == auth
    assert wire.decode_auth(wire.encode_auth(auth).encode()) == auth


@given(auths, st.binary(max_size=200))
def test_signed_datagram_round_trip(auth, payload):
    data = wire.encode_signed_datagram(auth, payload)
    assert wire.decode_signed_datagram(data) == (auth, payload)


def test_unsigned_datagram_has_no_auth():
    assert wire.decode_signed_datagram(b'{"dcounter":1}') == (None, b'{"dcounter":1}')


GOOD_AUTH = "kid=0123abcd,from=10.0.0.1:80,boot=0123456789abcdef,ts=1,seq=2,mac=" + "a" * 64


def test_good_auth():
    assert wire.decode_auth(GOOD_AUTH) == wire.Auth(
        "0123abcd", "10.0.0.1:80", "0123456789abcdef", 1, 2, "a" * 64
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        GOOD_AUTH + ",kid=0123abcd",
        GOOD_AUTH.replace("kid=0123abcd", "kid=0123ABCD"),
        GOOD_AUTH.replace("ts=1", "ts=-1"),
        GOOD_AUTH.replace("seq=2", "seq=" + "9" * 21),
        GOOD_AUTH.replace("mac=", "mac=a"),
        GOOD_AUTH.replace("boot=0123456789abcdef", "boot=0123"),
        GOOD_AUTH.replace(",boot=0123456789abcdef", ""),
        GOOD_AUTH.replace("from=10.0.0.1:80", "from=[::1]:80"),
        GOOD_AUTH.replace(",seq=2", ""),
        GOOD_AUTH + ",extra=1",
        GOOD_AUTH + "x" * 600,
        b"\xff" + GOOD_AUTH.encode(),
    ],
)
def test_bad_auth(value):
    with pytest.raises(MalformedMessage):
        wire.decode_auth(value)


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_decode_auth_only_raises_malformed(value):
    try:
        wire.decode_auth(value)
    except MalformedMessage:
        pass


@given(st.binary(max_size=1100).map(lambda b: wire.SIGNED_DATAGRAM + b))
def test_decode_signed_datagram_only_raises_malformed(data):
    try:
        wire.decode_signed_datagram(data)
    except MalformedMessage:
        pass


# Idempotency keys.

GOOD_KEYS = {
    "order-17": {
        "e": {"10.0.0.2:8080/a1b2c3": [1700000000.5, "d" * 32, [["default", 3, 7]]]},
        "s": {},
    }
}


def test_keys_round_trip():
    """Encoded keys decode to the same records, in a sync message too."""
    keys = wire.decode_keys(GOOD_KEYS)
    assert wire.encode_keys(keys) == GOOD_KEYS
    msg = wire.sync_from_json({**GOOD_SYNC, "keys": GOOD_KEYS})
    assert wire.encode_sync(msg)["keys"] == GOOD_KEYS


@given(json_values)
def test_decode_keys_of_arbitrary_json(value):
    """Any JSON as 'keys' raises only MalformedMessage."""
    try:
        wire.decode_keys(value)
    except MalformedMessage:
        pass


@given(st.sampled_from(["at", "digest", "writes", "write", "amount", "settlers"]), json_values)
def test_keys_with_any_field_value(field, value):
    """A good key record with one part replaced by any JSON value raises only MalformedMessage."""
    entry = list(GOOD_KEYS["order-17"]["e"]["10.0.0.2:8080/a1b2c3"])
    record = {"e": {"10.0.0.2:8080/a1b2c3": entry}, "s": {}}
    if field == "at":
        entry[0] = value
    elif field == "digest":
        entry[1] = value
    elif field == "writes":
        entry[2] = value
    elif field == "write":
        entry[2] = [value]
    elif field == "amount":
        entry[2] = [["default", value, 1]]
    else:
        record["s"] = {"10.0.0.2:8080/a1b2c3": value}
    try:
        wire.decode_keys({"order-17": record})
    except MalformedMessage:
        pass


@pytest.mark.parametrize(
    ("raw", "key"),
    [(b"abc", "abc"), (b'"abc"', "abc"), (b'"a\\"b"', 'a"b'), (b"~" * 128, "~" * 128), (b"a b", "a b")],
)
def test_idempotency_key_header(raw, key):
    assert wire.idempotency_key([raw]) == key


@pytest.mark.parametrize("raw", [b"", b"x" * 129, b"caf\xc3\xa9", b"a\tb", b'""', b"\x7f"])
def test_bad_idempotency_key_header(raw):
    with pytest.raises(MalformedMessage):
        wire.idempotency_key([raw])


def test_idempotency_key_header_twice():
    assert wire.idempotency_key(None) is None
    with pytest.raises(MalformedMessage):
        wire.idempotency_key([b"a", b"b"])
