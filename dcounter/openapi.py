# -*- test-case-name: tests.test_openapi -*-
"""
The OpenAPI 3 document of the HTTP API, served at GET /openapi.json.

Kept true by tests/test_openapi.py, which compares its paths and methods with
the Klein routes, and by the fuzzing run against a live node
(tests/integration/test_fuzz.py), which checks every answer against it.
"""

from __future__ import annotations

from typing import Any

from dcounter.counter import MAX_VALUE, MIN_VALUE
from dcounter.wire import MAX_AMOUNT, MAX_BATCH, MAX_NAME, MAX_SLOT

_ERRORS = {
    "400": "bad JSON, fields or values; a path or Host that is not UTF-8",
    "401": "a token or a valid MAC is needed",
    "403": "a sync from another cluster, or from a node not admitted",
    "404": "unknown path, counter or peer",
    "405": "wrong method",
    "409": "a value would pass 2^63-1 (or -2^63), or one counter too many",
    "413": "body too large",
    "502": "a peer to register did not answer as a node of this cluster",
    "503": "the data directory failed to commit (the write is indeterminate)",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(ok: dict[str, Any], *errors: str) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    for code in sorted({"400", "401", "404", "405", "413", *errors}):
        out[code] = _json(_ref("Error"), _ERRORS[code])
    return out


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_NAME_PATTERN = f"^[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{MAX_NAME - 1}}}$"
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": _NAME_PATTERN},
}

_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "answer once this many peers hold the write too (0 to 1000), or 'all'",
    "schema": {"type": "string", "pattern": "^(all|[0-9]{1,4})$"},
}

_ADDRESS = {"type": "string", "description": "HOST:PORT, a hostname or IPv4 address", "maxLength": 300}
_VALUE = {"type": "integer", "minimum": MIN_VALUE, "maximum": MAX_VALUE}
_SLOT = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0, "maximum": MAX_SLOT},
    "minItems": 2,
    "maxItems": 2,
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "additionalProperties": False,
    },
    "Count": {
        "type": "object",
        "required": ["count", "node_id"],
        "properties": {
            "count": _VALUE,
            "node_id": {"type": "string"},
            "replicated": {"type": "integer", "minimum": 0},
            "wait": {"type": "integer", "minimum": 0},
        },
    },
    "NamedCount": {
        "type": "object",
        "required": ["name", "count", "node_id"],
        "properties": {
            "name": {"type": "string"},
            "count": _VALUE,
            "node_id": {"type": "string"},
            "replicated": {"type": "integer", "minimum": 0},
            "wait": {"type": "integer", "minimum": 0},
        },
    },
    "Amount": {
        "type": "object",
        "properties": {"by": {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT}},
        "additionalProperties": False,
    },
    "PeerId": {
        "type": "object",
        "required": ["id"],
        "properties": {"id": _ADDRESS},
        "additionalProperties": False,
    },
    "LegacySync": {
        "type": "object",
        "required": ["count"],
        "properties": {"count": {"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT}},
        "additionalProperties": False,
    },
    "Batch": {
        "type": "object",
        "description": (
            "counter name -> amount (negative: a decrement); all applied or none; "
            f"at most {MAX_BATCH} counters with an Idempotency-Key"
        ),
        "minProperties": 1,
        "propertyNames": {"pattern": _NAME_PATTERN},
        "additionalProperties": {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT},
                {"type": "integer", "minimum": -MAX_AMOUNT, "maximum": -1},
            ]
        },
    },
    "PeerDigest": {
        "type": "object",
        "required": ["from", "incarnation", "cluster", "digest"],
        "properties": {
            "from": _ADDRESS,
            "incarnation": {"type": "string"},
            "cluster": {"type": "string"},
            "digest": {"type": "string", "description": "256 bucket digests of 8 bytes, base64"},
            "members": {"type": "array", "items": _ADDRESS},
        },
        "additionalProperties": False,
    },
    "PeerSync": {
        "type": "object",
        "required": ["from", "incarnation", "cluster", "state"],
        "properties": {
            "from": _ADDRESS,
            "incarnation": {"type": "string"},
            "cluster": {"type": "string"},
            "state": {
                "type": "object",
                "description": "counter name -> replica id -> [P, N]",
                "additionalProperties": {"type": "object", "additionalProperties": _SLOT},
            },
            "members": {"type": "array", "items": _ADDRESS},
            "reply": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
    "Health": {
        "type": "object",
        "required": ["status", "node_id", "incarnation", "cluster", "auth"],
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "node_id": {"type": "string"},
            "incarnation": {"type": "string"},
            "cluster": {"type": "string"},
            "uptime": {"type": "number"},
            "peers": {"type": "object", "additionalProperties": {"type": "integer"}},
            "auth": {"type": "string", "enum": ["on", "off"]},
        },
    },
}


def document() -> dict[str, Any]:
    """
    The whole document, as JSON-ready data.
    """
    count = _json(_ref("Count"))
    named = _json(_ref("NamedCount"))
    late = "accepted, but fewer peers than ?wait asked held it in time: it counts all the same"
    obj = {"type": "object"}
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Who this node is; probes carry a MAC when a key is set",
                "responses": _responses(_json(_ref("Health"))),
            }
        },
        "/count": {"get": {"summary": "The counter 'default'", "responses": _responses(count)}},
        "/increment": {
            "post": {
                "summary": "Count 1, or 'by', on 'default', once durable (and held by ?wait peers)",
                "parameters": [_WAIT],
                "requestBody": _body(_ref("Amount"), required=False),
                "responses": {**_responses(count, "409", "503"), "202": _json(_ref("Count"), late)},
            }
        },
        "/sync": {
            "post": {
                "summary": "A peer's state (signed with a key), or the original's {'count': N} "
                "(the operator's token with a key)",
                "requestBody": _body({"oneOf": [_ref("LegacySync"), _ref("PeerSync")]}),
                "responses": _responses(_json(obj), "403", "409", "503"),
            }
        },
        "/probe": {
            "post": {
                "summary": "SWIM's indirect probe: a member asks this node to probe another member "
                "(signed with a key)",
                "requestBody": _body(obj),
                "responses": _responses(_json(obj), "403"),
            }
        },
        "/peers": {
            "get": {
                "summary": "Peers believed alive",
                "responses": _responses(_json({"type": "array", "items": {"type": "string"}})),
            }
        },
        "/register": {
            "post": {
                "summary": "Admit a peer once it answers as itself (operator's token with a key)",
                "requestBody": _body(_ref("PeerId")),
                "responses": _responses(_json(obj), "502"),
            }
        },
        "/remove-peer": {
            "post": {
                "summary": "Remove a peer and quarantine it (operator's token with a key)",
                "requestBody": _body(_ref("PeerId")),
                "responses": _responses(_json(obj)),
            }
        },
        "/discovery": {
            "get": {"summary": "Discovery, admission and auth figures", "responses": _responses(_json(obj))}
        },
        "/members": {"get": {"summary": "Every peer with its state", "responses": _responses(_json(obj))}},
        "/counters": {
            "get": {"summary": "Every counter's value", "responses": _responses(_json(obj))},
            "post": {
                "summary": "A batch of increments and decrements, all or nothing, one commit",
                "requestBody": _body(_ref("Batch")),
                "responses": _responses(_json(obj), "409", "503"),
            },
        },
        "/digest": {
            "post": {
                "summary": "A peer's digest, opening anti-entropy (signed with a key)",
                "requestBody": _body(_ref("PeerDigest")),
                "responses": _responses(_json(obj), "403"),
            }
        },
        "/counters/{name}": {
            "get": {
                "summary": "One counter; 404 if never written",
                "parameters": [_NAME],
                "responses": _responses(named),
            }
        },
        "/counters/{name}/increment": {
            "post": {
                "summary": "Count up on a named counter",
                "parameters": [_NAME, _WAIT],
                "requestBody": _body(_ref("Amount"), required=False),
                "responses": {**_responses(named, "409", "503"), "202": _json(_ref("NamedCount"), late)},
            }
        },
        "/counters/{name}/decrement": {
            "post": {
                "summary": "Count down on a named counter",
                "parameters": [_NAME, _WAIT],
                "requestBody": _body(_ref("Amount"), required=False),
                "responses": {**_responses(named, "409", "503"), "202": _json(_ref("NamedCount"), late)},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json(obj)}},
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}}
                        },
                    },
                    **{k: v for k, v in _responses(_json(obj)).items() if k != "200"},
                },
            }
        },
        "/version": {
            "get": {
                "summary": "This node's version and Twisted's and Python's",
                "responses": _responses(
                    _json(
                        {
                            "type": "object",
                            "required": ["version", "node_id"],
                            "properties": {"version": {"type": "string"}, "node_id": {"type": "string"}},
                        }
                    )
                ),
            }
        },
        "/status": {
            "get": {"summary": "Every member's view of the counters", "responses": _responses(_json(obj))}
        },
        "/": {
            "get": {
                "summary": "The status page, for people",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/html; charset=utf-8": {"schema": {"type": "string"}}},
                    },
                    **{k: v for k, v in _responses(_json(obj)).items() if k != "200"},
                },
            }
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "dcounter",
            "version": "1",
            "description": "A peer-to-peer distributed counter.  Every error is JSON: "
            + "; ".join(f"{code} {what}" for code, what in _ERRORS.items()),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
