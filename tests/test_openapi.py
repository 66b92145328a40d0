"""
The OpenAPI document is the API: every route in it, nothing else.
"""

from __future__ import annotations

import re

from dcounter import openapi
from dcounter.api import CounterAPI
from tests.support import Network

IGNORED = {"HEAD", "OPTIONS"}


def klein_routes() -> set[tuple[str, str]]:
    routes = set()
    for rule in CounterAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in IGNORED:
                routes.add((path, method.lower()))
    return routes


def document_routes(doc: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item}


def test_the_document_lists_exactly_the_routes() -> None:
    assert document_routes(openapi.document()) == klein_routes()


def test_the_document_is_served() -> None:
    net = Network()
    a = net.add(9001)
    reply = net.call("GET", a.id, "/openapi.json")
    assert reply.code == 200
    assert reply.json == openapi.document()
    assert reply.json["openapi"].startswith("3.")


def test_every_reference_resolves() -> None:
    doc = openapi.document()
    text = repr(doc)
    for name in re.findall(r"#/components/schemas/(\w+)", text):
        assert name in doc["components"]["schemas"]
