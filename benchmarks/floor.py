"""
The floor for the hot-path benchmark: the least a Twisted HTTP server does
to answer POST /increment with a fixed JSON body.

    python benchmarks/floor.py twisted PORT   # a bare twisted.web resource
    python benchmarks/floor.py klein PORT     # a bare Klein route
"""

from __future__ import annotations

import sys

from klein import Klein
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

BODY = b'{"count":1,"node_id":"127.0.0.1:1"}\n'


class Bare(Resource):
    isLeaf = True

    def render_POST(self, request: object) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[attr-defined]
        return BODY


class BareKlein:
    app = Klein()

    @app.route("/increment", methods=["POST"])
    def increment(self, request: object) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[attr-defined]
        return BODY


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    root = Bare() if kind == "twisted" else BareKlein().app.resource()
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]  # no access log, like dcounter
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
