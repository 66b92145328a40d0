# -*- test-case-name: tests.test_api -*-
"""
The HTTP API: the original's endpoints, named counters, and the cluster's
own /sync, on one Klein app.

Handlers decode with L{dcounter.wire}, act through the node, the membership
table, the health checker and the replicator, and answer JSON.  Every error
becomes C{{"error": "..."}} with its status in L{CounterAPI.errors}, the one
place where exceptions map to statuses; nothing else reaches a client.
"""

from __future__ import annotations

import hmac
import json
import os
import platform
import re
import signal
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from klein import Klein
from twisted.copyright import version as twisted_version
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from werkzeug.exceptions import BadHost, HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from dcounter import __version__, digest, keyring, openapi, status, wire
from dcounter.admission import AdmissionError
from dcounter.counter import DEFAULT_COUNTER, CounterOverflow, TooManyCounters
from dcounter.health import HealthChecker
from dcounter.idempotency import KeyMismatch
from dcounter.membership import Membership
from dcounter.metrics import CONTENT_TYPE, Metrics
from dcounter.node import Node
from dcounter.replication import NotMember, Replicator, WrongCluster
from dcounter.store import StoreError


class NotFound(Exception):
    pass


class BodyTooLarge(Exception):
    pass


class Unauthorized(Exception):
    """
    A request lacks the token or the MAC its endpoint needs: a 401, and
    nothing changes.
    """


def _json(request: IRequest, body: object, code: int = 200) -> bytes:
    return _encoded(request, json.dumps(body, separators=(",", ":")).encode() + b"\n", code)


def _encoded(request: IRequest, data: bytes, code: int = 200) -> bytes:
    """
    Answer C{data}, a JSON body encoded already.
    """
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return data


def _body(request: IRequest, limit: int = wire.MAX_BODY) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body: bytes = content.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge(f"request body is larger than {limit} bytes")
    return body


class CounterAPI:
    app = Klein()
    log = Logger()

    #: exception -> HTTP status; checked in order, first match wins.
    errors: list[tuple[type[BaseException], int]] = [
        (wire.MalformedMessage, 400),
        (Unauthorized, 401),
        (WrongCluster, 403),
        (NotMember, 403),
        (NotFound, 404),
        (CounterOverflow, 409),
        (TooManyCounters, 409),
        (BodyTooLarge, 413),
        (KeyMismatch, 422),
        (AdmissionError, 502),
        (StoreError, 503),
    ]

    def __init__(
        self,
        node: Node,
        membership: Membership,
        health: HealthChecker,
        replicator: Replicator,
        discovery: Any = None,
        metrics: Metrics | None = None,
        *,
        guard: keyring.Guard | None = None,
        admin_token: str | None = None,
        client_token: str | None = None,
        wait_timeout: float = 5.0,
        crash_after_keyed_commit: bool = False,
    ) -> None:
        """
        @param guard: signs and checks node-to-node messages, once its
            keyring holds a key.
        @param admin_token: the operator token; without it, the one derived
            from the signing key (L{keyring.Keyring.admin_token}).
        @param client_token: if set, the token every client endpoint needs.
        """
        self.node = node
        #: FAULT TESTING ONLY: see L{dcounter.tap.FAULT_CRASH_ENV}.
        self.crash_after_keyed_commit = crash_after_keyed_commit
        self.wait_timeout = wait_timeout
        self.membership = membership
        self.health_checker = health
        self.replicator = replicator
        self.discovery = discovery
        if metrics is None:
            metrics = Metrics()
            metrics.watch(node, membership, health, discovery)
        self.metrics = metrics
        self.cluster_status = status.ClusterStatus(node, membership, replicator.client)
        self.guard = guard or keyring.Guard(keyring.Keyring(), node.node_id)
        self._admin_token = admin_token
        self.client_token = client_token
        #: The node is stopping: every request is answered 503
        #: (L{dcounter.tap.StopAnswering}).
        self.stopping = False

    # Who may call what.

    #: Endpoints anyone may call: probes and monitoring, the API's own
    #: description.  /sync decides for itself (a peer's MAC or an operator's
    #: token), /digest and /probe too (a peer's MAC).  Every other endpoint is
    #: a client's.
    OPEN = frozenset({"/health", "/openapi.json", "/sync", "/digest", "/probe"})
    #: Endpoints that need the operator's token once a key (or the token) is set.
    OPERATOR = frozenset({"/register", "/remove-peer"})

    def admin_token(self) -> str | None:
        """
        The operator's token: --admin-token, else derived from the signing
        key, else (a client token alone) the client token.
        """
        return self._admin_token or self.guard.keyring.admin_token() or self.client_token

    @property
    def auth_mode(self) -> str:
        return "on" if self.guard.enabled or self._admin_token or self.client_token else "off"

    def authorize(self, request: IRequest, path: str) -> None:
        """
        Check the bearer token C{path} needs, before any handler runs.

        @raise Unauthorized: if it is missing or wrong.
        """
        if path in self.OPERATOR:
            self._bearer(request, self.admin_token())
        elif path not in self.OPEN and self.client_token is not None:
            self._bearer(request, self.client_token, self.admin_token())

    def _bearer(self, request: IRequest, *tokens: str | None) -> None:
        wanted = [t for t in tokens if t]
        if not wanted:
            return
        given = request.getHeader(b"authorization") or b""
        scheme, _, token = given.partition(b" ")
        # As bytes: compare_digest refuses str with non-ASCII characters.
        if scheme.lower() == b"bearer" and any(
            hmac.compare_digest(token.strip(), t.encode()) for t in wanted
        ):
            return
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="dcounter"')
        raise Unauthorized("this endpoint needs 'Authorization: Bearer TOKEN'")

    def _signature(self, request: IRequest) -> wire.Auth | None:
        raw = request.getHeader(wire.AUTH_HEADER.encode())
        if raw is None:
            return None
        try:
            return wire.decode_auth(raw)
        except wire.MalformedMessage:
            self.guard.refused("http", "malformed")
            raise Unauthorized("malformed signature") from None

    def _verify(self, request: IRequest, auth: wire.Auth | None, to: str, body: bytes) -> wire.Auth:
        method = request.method.decode()
        context = keyring.request_context(method, request.path.decode(), to)
        try:
            self.guard.check("http", context, auth, body, self.node.clock.seconds())
        except keyring.Refused as e:
            raise Unauthorized(f"message refused: {e.reason}") from None
        assert auth is not None
        return auth

    def _signed(self, request: IRequest, body: object, answered: wire.Auth) -> bytes:
        """
        An answer to a signed request: signed, and bound to it.
        """
        data = _json(request, body)
        auth = self.guard.seal(keyring.response_context(200, answered), data, self.node.clock.seconds())
        request.setHeader(wire.AUTH_HEADER.encode(), wire.encode_auth(auth).encode())
        return data

    def resource(self, hot_paths: bool = True) -> Any:
        """
        The API as a twisted.web resource: who may call what first
        (L{_Root}), then the hot routes served directly (L{HotPaths}; not
        with C{hot_paths} false), every other request by Klein.
        """
        return _Root(self, hot_paths)

    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Any) -> bytes:
        return self.error_body(request, failure)

    def error_body(self, request: IRequest, failure: Failure) -> bytes:
        """
        The JSON error answering C{failure}, its status set on C{request}.
        """
        error = failure.value
        if isinstance(error, HTTPException):
            if isinstance(error, MethodNotAllowed) and error.valid_methods:
                request.setHeader(b"Allow", ", ".join(error.valid_methods).encode())
            if isinstance(error, RequestRedirect):  # as /counters//x: where Klein routes it
                request.setHeader(b"Location", _relative(error.new_url, request.uri))
            return _json(request, {"error": error.name.lower()}, error.code or 500)
        for kind, code in self.errors:
            if isinstance(error, kind):
                return _json(request, {"error": str(error)}, code)
        self.log.failure("unhandled error in {method} {uri}", failure, method=request.method, uri=request.uri)
        return _json(request, {"error": "internal error"}, 500)

    # The original's endpoints.

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """
        A probe from a peer is signed, when a key is set, and so is our
        answer; a monitor's unsigned request gets a plain answer, which no
        peer admits.
        """
        auth = self._signature(request) if self.guard.enabled else None
        if auth is not None:
            self._verify(request, auth, "", b"")
        swim = self.health_checker.swim
        # Rumors only for a peer: with a key, a signed probe; without, anyone.
        peer = auth is not None or not self.guard.enabled
        hello = wire.Hello(
            node_id=self.node.node_id,
            incarnation=self.node.identity.incarnation,
            cluster=self.node.cluster,
            generation=swim.generation,
            rumors=swim.rumors() if peer else (),
            extra={
                "uptime": round(self.node.uptime(), 3),
                "peers": self.membership.counts(),
                "auth": self.auth_mode,
            },
        )
        if auth is not None:
            return self._signed(request, wire.encode_hello(hello), auth)
        return _json(request, wire.encode_hello(hello))

    @app.route("/count", methods=["GET"])
    def count(self, request: IRequest) -> bytes:
        return _json(request, {"count": self.node.value(DEFAULT_COUNTER), "node_id": self.node.node_id})

    @app.route("/increment", methods=["POST"])
    async def increment(self, request: IRequest) -> bytes:
        by = wire.amount_body(_body(request))
        return await self._write(request, DEFAULT_COUNTER, by, {})

    @app.route("/sync", methods=["POST"])
    def sync(self, request: IRequest) -> Deferred[bytes]:
        return self.peer_sync(request)

    def peer_sync(self, request: IRequest) -> Deferred[bytes]:
        """
        A peer's sync (also served by L{HotPaths}).  With a key set: it must
        carry a valid MAC, from the node it names as sender; the legacy
        C{{"count": N}} (no MAC) needs the operator's token.  Without: as
        the original, open.

        @return: the answer, once what the peer sent is durable here (a peer
            that counts us among those holding its write, C{?wait=N}, may
            then lose its disk).
        @raise Exception: at once, for a sync refused; nothing changes.
        """
        body = _body(request, wire.MAX_SYNC_BODY)
        auth = self._signature(request) if self.guard.enabled else None
        legacy = self.guard.enabled and auth is None
        if legacy:  # the legacy sync, or a forgery: the token first, before parsing
            self._bearer(request, self.admin_token())
        elif auth is not None:
            self._verify(request, auth, self.node.node_id, body)
        message = wire.decode_sync(body)
        if isinstance(message, wire.LegacySync):
            if auth is not None:
                raise wire.MalformedMessage("a peer's sync carries state, not 'count'")
            self._bearer(request, self.admin_token())
            return self.node.raise_to(DEFAULT_COUNTER, message.count).addCallback(
                lambda count: _json(request, {"count": count, "node_id": self.node.node_id})
            )
        if legacy:
            self.guard.refused("http", "unsigned")
            raise Unauthorized("a peer's sync must be signed with the cluster's key")
        self._same_sender(auth, message.sender, "a sync")
        reply = self.replicator.received(message)
        answer = {"ok": True} if reply is None else wire.encode_sync(reply)
        return self.node.durable().addCallback(lambda _: self._peer_reply(request, auth, answer))

    def _peer_auth(self, request: IRequest, body: bytes, what: str) -> wire.Auth | None:
        """
        With a key set, the verified signature of a peer's message (C{what}),
        or 401; without a key, None.
        """
        if not self.guard.enabled:
            return None
        auth = self._signature(request)
        if auth is None:
            self.guard.refused("http", "unsigned")
            raise Unauthorized(f"{what} must be signed with the cluster's key")
        self._verify(request, auth, self.node.node_id, body)
        return auth

    @staticmethod
    def _same_sender(auth: wire.Auth | None, sender: str, what: str) -> None:
        if auth is not None and auth.sender != sender:
            raise Unauthorized(f"{what} signed by one node in the name of another")

    def _peer_reply(self, request: IRequest, auth: wire.Auth | None, answer: Any) -> bytes:
        return _json(request, answer) if auth is None else self._signed(request, answer, auth)

    @app.route("/digest", methods=["POST"])
    def digest(self, request: IRequest) -> bytes:
        """
        A peer's digest, opening an anti-entropy round.  With a key set, it
        must carry a valid MAC from the node it names as sender, and our
        answer is signed; without, open, as /sync is.
        """
        body = _body(request, wire.MAX_SYNC_BODY)
        auth = self._peer_auth(request, body, "a peer's digest")
        message = wire.decode_digest(body, digest.BUCKETS * digest.WIDTH)
        self._same_sender(auth, message.sender, "a digest")
        before = wire.keys_before(request.args.get(b"keys_before"))
        answer = wire.encode_digest_reply(self.replicator.received_digest(message, before))
        return self._peer_reply(request, auth, answer)

    @app.route("/probe", methods=["POST"])
    async def probe(self, request: IRequest) -> bytes:
        """
        SWIM's indirect probe.  With a key set it must be signed by the
        member it names as sender; without, that sender must be a member.
        """
        body = _body(request)
        auth = self._peer_auth(request, body, "an indirect probe")
        message = wire.decode_probe_request(body)
        self._same_sender(auth, message.sender, "an indirect probe")
        answer = wire.encode_probe_answer(await self.health_checker.probe_for(message))
        return self._peer_reply(request, auth, answer)

    @app.route("/peers", methods=["GET"])
    def peers(self, request: IRequest) -> bytes:
        return _json(request, self.membership.live())

    @app.route("/register", methods=["POST"])
    async def register(self, request: IRequest) -> bytes:
        peer = wire.id_body(_body(request))
        # Refused before any probe (a 400): what no answer could change.
        why = self.health_checker.admission.refusal(peer, self.node.clock.seconds(), force=True)
        if why is not None:
            raise wire.MalformedMessage(why)
        try:
            node_id = await self.health_checker.admit(peer, expected_id=peer, force=True)
        except AdmissionError as e:  # the client gets the text, the log the detail too
            self.log.info("/register of {peer} refused: {why}", peer=peer, why=e.for_log())
            raise
        return _json(request, {"status": "registered", "id": node_id})

    @app.route("/remove-peer", methods=["POST"])
    def remove_peer(self, request: IRequest) -> bytes:
        peer = wire.id_body(_body(request))
        now = self.node.clock.seconds()
        if not self.membership.remove(peer, now):
            raise NotFound(f"{peer} is not a peer of this node")
        return _json(
            request,
            {"status": "removed", "id": peer, "quarantined_for": self.membership.quarantine},
        )

    @app.route("/discovery", methods=["GET"])
    def discovery_info(self, request: IRequest) -> bytes:
        info: dict[str, Any] = {
            "node_id": self.node.node_id,
            "peers": self.membership.live(),
            "cluster": self.node.cluster,
            "enabled": self.discovery is not None,
            "admissions": dict(self.health_checker.admissions),
            "auth": self.guard.info() | {"auth": self.auth_mode},
        }
        if self.discovery is not None:
            info.update(self.discovery.info())
        return _json(request, info)

    # Beyond the original.

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        return _json(request, openapi.document())

    @app.route("/members", methods=["GET"])
    def members(self, request: IRequest) -> bytes:
        return _json(
            request,
            {
                "node_id": self.node.node_id,
                "incarnation": self.node.identity.incarnation,
                "generation": self.health_checker.swim.generation,
                "awareness": self.health_checker.swim.awareness,
                "fold_pending": self.node.fold_pending,
                "members": [p.as_json() for p in self.membership.peers()],
            },
        )

    @app.route("/counters", methods=["GET"])
    def counters(self, request: IRequest) -> bytes:
        return _json(request, {"counters": self.node.counters.values(), "node_id": self.node.node_id})

    @app.route("/counters", methods=["POST"])
    async def counters_batch(self, request: IRequest) -> bytes:
        key = wire.idempotency_key(request.requestHeaders.getRawHeaders(b"Idempotency-Key"))
        amounts = wire.batch_body(_body(request), keyed=key is not None)
        if key is None:
            values = await self.node.add_many(amounts)
            return _json(request, {"counters": values, "node_id": self.node.node_id})
        writes = sorted(amounts.items())  # the same batch in any order is the same request
        replay = self.node.replay(key, writes)
        if replay is not None:
            # Answer as the first did, and change nothing.
            await replay.durable
            request.setHeader(b"Idempotent-Replayed", b"true")
            entry = replay.entry
        else:
            entry = await self.node.add_keyed(key, writes)
            if self.crash_after_keyed_commit:
                os.kill(os.getpid(), signal.SIGKILL)
        counted = {name: count for name, _, count in entry.writes}
        return _json(request, {"counters": counted, "node_id": self.node.node_id})

    @app.route("/counters/<name>", methods=["GET"])
    def counter(self, request: IRequest, name: str) -> bytes:
        wire.counter_name(name)
        if name not in self.node.counters:
            raise NotFound(f"no counter named {name!r}")
        return _json(request, {"name": name, "count": self.node.value(name), "node_id": self.node.node_id})

    @app.route("/counters/<name>/increment", methods=["POST"])
    async def counter_increment(self, request: IRequest, name: str) -> bytes:
        return await self._add(request, name, 1)

    @app.route("/counters/<name>/decrement", methods=["POST"])
    async def counter_decrement(self, request: IRequest, name: str) -> bytes:
        return await self._add(request, name, -1)

    async def _add(self, request: IRequest, name: str, sign: int) -> bytes:
        wire.counter_name(name)
        by = wire.amount_body(_body(request))
        return await self._write(request, name, sign * by, {"name": name})

    async def _write(self, request: IRequest, name: str, amount: int, body: dict[str, Any]) -> bytes:
        """
        Count C{amount} on counter C{name}.  With C{?wait=N}, answer once N
        peers hold the write too; if fewer do after C{wait_timeout}, answer
        202 (accepted: it counts, but is not replicated as asked), with how
        many do.
        """
        wait = wire.write_concern(request.args.get(b"wait"))
        key = wire.idempotency_key(request.requestHeaders.getRawHeaders(b"Idempotency-Key"))
        if key is None:
            written = self.node.add(name, amount)
            slot = self.node.own_slot(name)  # this write's, before any later one
            body.update(count=await written, node_id=self.node.node_id)
        else:
            replay = self.node.replay(key, [(name, amount)])
            if replay is not None:
                # Answer as the first did, and change nothing.
                await replay.durable
                request.setHeader(b"Idempotent-Replayed", b"true")
                body.update(count=replay.entry.writes[0][2], node_id=self.node.node_id)
                return _json(request, body)
            keyed = self.node.add_keyed(key, [(name, amount)])
            slot = self.node.own_slot(name)
            body.update(count=(await keyed).writes[0][2], node_id=self.node.node_id)
            if self.crash_after_keyed_commit:
                os.kill(os.getpid(), signal.SIGKILL)
        if wait is None:
            return _json(request, body)
        needed = len(self.membership.live()) if wait == "all" else int(wait)
        own = (name, self.node.replica)
        body["replicated"] = await self.replicator.replicated(own, slot, needed, self.wait_timeout)
        body["wait"] = needed
        return _json(request, body, 200 if body["replicated"] >= needed else 202)

    # For operators and people: metrics, version, the status page.

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return self.metrics.exposition()

    @app.route("/version", methods=["GET"])
    def version(self, request: IRequest) -> bytes:
        return _json(
            request,
            {
                "version": __version__,
                "node_id": self.node.node_id,
                "twisted": twisted_version,
                "python": platform.python_version(),
            },
        )

    @app.route("/status", methods=["GET"])
    async def cluster(self, request: IRequest) -> bytes:
        return _json(request, await self.cluster_status.snapshot())

    @app.route("/", methods=["GET"])
    def status_page(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(
            b"Content-Security-Policy",
            b"default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
        )
        return status.page()


class _Root(Resource):
    """
    Klein's resource behind one check that it answers in plain text: a path
    or Host that is not UTF-8 (C{/counters/%FF/increment}) is a JSON 400
    here, with no traceback logged; then who may call what; then the hot
    routes (L{HotPaths}, unless C{hot_paths} is false), then Klein.
    """

    isLeaf = True

    def __init__(self, api: CounterAPI, hot_paths: bool = True) -> None:
        super().__init__()
        self.api = api
        self.klein = api.app.resource()
        self.hot = HotPaths(api) if hot_paths else None

    def render(self, request: Any) -> Any:
        if self.api.stopping:
            request.setHeader(b"Retry-After", b"1")
            return _json(request, {"error": "this node is stopping: ask another"}, 503)
        raw = request.path
        if not raw.startswith(b"/"):
            # twisted.web drops a target's first character, whatever it is,
            # to make the segments Klein routes: "xregister" is /register.
            return _json(request, {"error": "the request target must be a path that starts with /"}, 400)
        try:
            # Most paths need no percent-decoding: the raw path is the one.
            path = raw.decode() if raw.isascii() and b"%" not in raw else self._decoded(request)
        except UnicodeDecodeError:
            return self._not_utf8(request)
        if "//" in path:  # as Klein routes it: werkzeug merges runs of slashes
            path = _SLASHES.sub("/", path)
        if not request.method.isupper():  # werkzeug would take "post" for POST
            return _json(request, {"error": "unknown method (methods are case-sensitive)"}, 501)
        try:
            self.api.authorize(request, path)
        except Unauthorized as e:
            return _json(request, {"error": str(e)}, 401)
        if self.hot is not None:
            answer = self.hot.serve(request)
            if answer is not None:
                return answer
        try:
            request.getRequestHostname().decode("utf-8")  # Klein's URL map decodes it
        except UnicodeDecodeError:
            return self._not_utf8(request)
        try:
            return self.klein.render(request)
        except BadHost:  # werkzeug's URL map refuses the Host, outside Klein's error handlers
            return self.api.error_body(request, Failure())

    @staticmethod
    def _decoded(request: Any) -> str:
        """
        The path Klein routes: the percent-decoded segments joined, so that
        C{/%2Fregister} is C{//register}, then C{/register} (L{render}).
        Who may call what is decided on it, not on the raw path.
        """
        return "/" + b"/".join(request.postpath).decode("utf-8")

    @staticmethod
    def _not_utf8(request: Any) -> bytes:
        return _json(request, {"error": "the path and Host must be UTF-8 once percent-decoded"}, 400)


def _relative(url: str, uri: bytes) -> bytes:
    """
    A redirect's target as a path, with the request's query: werkzeug's
    absolute URL names the port the socket listens on, which is not the
    one a client reached through a port mapping, and leaves the query out.
    """
    query = uri.partition(b"?")[2]
    return urlsplit(url).path.encode() + (b"?" + query if query else b"")


_JSON = b"application/json"
_NO_STORE = b"no-store"
_SLASHES = re.compile("/{2,}")
_COUNTERS = b"/counters/"
_SIGNS = {b"increment": 1, b"decrement": -1}


class HotPaths:
    """
    The hot routes (GET /count, POST /increment, GET /counters/{name},
    POST /counters/{name}/increment and /decrement, and peers' POST /sync)
    served without Klein, with the same answers and errors; L{serve}
    answers None for every other request, which is Klein's.

    Why: under load, Klein's routing (werkzeug's URL map bound per request,
    Deferreds around every handler and its answer) took about half of the
    server's CPU for a one-line handler.  A request whose path needs
    decoding (C{%}), a trailing slash, or another method goes to Klein, so
    redirects, 404s and 405s stay Klein's; so does a request with a query
    string, whose parameters only Klein's handlers read, and a request with
    an C{Idempotency-Key}, whose keyed handling is Klein's handlers'.
    """

    def __init__(self, api: CounterAPI) -> None:
        self.api = api
        self.node = api.node
        self._node_id = b',"node_id":' + json.dumps(self.node.node_id).encode() + b"}\n"

    def serve(self, request: Any) -> Any:
        """
        Serve C{request} if it is a hot one; else None.
        """
        method, path = request.method, request.path
        if b"?" in request.uri:  # query parameters are Klein's handlers' to read
            return None
        if request.requestHeaders.hasHeader(b"Idempotency-Key"):  # keyed writes are Klein's
            return None
        try:
            if path == b"/increment":
                if method == b"POST":
                    return self._add(request, DEFAULT_COUNTER, None, 1)
            elif path == b"/count":
                if method == b"GET":
                    return self._ok(
                        request, b'{"count":%d%s' % (self.node.value(DEFAULT_COUNTER), self._node_id)
                    )
            elif path == b"/sync":
                if method == b"POST":
                    return self._when(request, self.api.peer_sync(request))
            elif path.startswith(_COUNTERS) and b"%" not in path:
                name, slash, action = path[len(_COUNTERS) :].partition(b"/")
                if name and name.isascii():
                    if not slash and method == b"GET":
                        return self._counter(request, wire.counter_name(name.decode()))
                    sign = _SIGNS.get(action)
                    if sign is not None and method == b"POST":
                        text = wire.counter_name(name.decode())
                        return self._add(request, text, b'{"name":"%s",' % name, sign)
        except Exception:
            return self.api.error_body(request, Failure())
        return None

    def _ok(self, request: Any, body: bytes) -> bytes:
        request.setHeader(b"Content-Type", _JSON)
        request.setHeader(b"Cache-Control", _NO_STORE)
        return body

    def _counter(self, request: Any, name: str) -> bytes:
        if name not in self.node.counters:
            raise NotFound(f"no counter named {name!r}")
        count = self.node.value(name)
        return self._ok(request, b'{"name":"%s","count":%d%s' % (name.encode(), count, self._node_id))

    def _add(self, request: Any, name: str, head: bytes | None, sign: int) -> Any:
        """
        Count on C{name}; answer once the write is durable.
        """
        by = wire.amount_body(_body(request))
        prefix = b'{"count":' if head is None else head + b'"count":'
        if self.node.store.keeps_nothing:  # durable at once: no Deferred to wait on
            value = self.node.add_now(name, sign * by)
            return self._ok(request, b"%s%d%s" % (prefix, value, self._node_id))
        # Nor a Deferred to wait on the commit: they cost about 30 us a write.
        self.node.add_then(name, sign * by, partial(self._durable, request, name, prefix))
        return NOT_DONE_YET

    def _durable(self, request: Any, name: str, prefix: bytes, result: int | Failure) -> None:
        """
        Answer a write once it is durable (or has failed).  A client that
        has left gets nothing; its write stands (as L{Node.add}'s).
        """
        if self._gone(request):
            if isinstance(result, Failure):
                self.node.failed_unheard(name, result)
            return
        if isinstance(result, Failure):
            self._finish(request, self.api.error_body(request, result))
        else:
            self._finish(request, self._ok(request, b"%s%d%s" % (prefix, result, self._node_id)))

    @staticmethod
    def _gone(request: Any) -> bool:
        """Whether the client has left (Twisted drops the request's channel then)."""
        return bool(request.finished) or getattr(request, "channel", None) is None

    @staticmethod
    def _finish(request: Any, data: bytes) -> None:
        request.setHeader(b"Content-Length", b"%d" % len(data))
        request.write(data)
        request.finish()

    def _when(self, request: Any, answer: Deferred[bytes]) -> Any:
        """
        Answer with the body C{answer} gives (an error as Klein would): at
        once if it has fired (a store in memory), else once it does, unless
        the client has left by then.
        """
        now: list[bytes | Failure] = []

        def body(result: bytes | Failure) -> bytes:
            return self.api.error_body(request, result) if isinstance(result, Failure) else result

        def later(result: bytes | Failure) -> None:
            if not waiting:
                now.append(result)
            elif not self._gone(request):
                self._finish(request, body(result))

        waiting = False
        answer.addBoth(later)
        if now:
            return body(now[0])
        waiting = True
        return NOT_DONE_YET


class BoundedRequest(Request):
    """
    A request that refuses a body larger than any endpoint takes (413) as
    soon as its length is known or its chunks pass the limit, instead of
    buffering it first.  Each endpoint checks its own, smaller limit.
    """

    max_body = wire.MAX_SYNC_BODY
    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
        else:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        body = json.dumps({"error": f"request body is larger than {self.max_body} bytes"}).encode()
        transport = self.channel.transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        transport.loseConnection()


class CounterChannel(HTTPChannel):
    """
    An HTTP/1.1 connection that asks its transport for its two addresses
    once, not for every request: twisted.web builds each request's C{host}
    with a C{getsockname} call and a new address object, about 5 us of the
    hot path's CPU (py-spy under wrk).  A connection's addresses do not
    change.  (Site's default protocol would also negotiate HTTP/2 over TLS
    with the h2 package installed; dcounter does not install it.)
    """

    _host: Any = None
    _peer: Any = None

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        # twisted.web takes a Content-Length of digits to int(): past 4,300
        # digits Python refuses, the reactor logs an unhandled error, and the
        # client gets no answer.  No length takes more than 19 digits: answer
        # it as twisted.web answers any bad length (400, then close).
        if header == b"Content-Length" and len(data) > 19:
            return bool(self._failChooseTransferDecoder())
        return bool(super()._maybeChooseTransferDecoder(header, data))


class CounterSite(Site):
    """
    A Site that never shows tracebacks, bounds request bodies, drops idle
    connections after a minute, and logs requests only if asked.
    """

    displayTracebacks = False
    noisy = False
    requestFactory = BoundedRequest
    protocol = CounterChannel  # type: ignore[assignment]  # an HTTPChannel, as the wrapper wraps

    def __init__(self, api: CounterAPI, access_log: bool = False, reactor: Any = None) -> None:
        # parsePOSTFormSubmission: the API reads JSON bodies itself; parsing each
        # request's Content-Type for forms cost a peer 6% of its CPU per sync.
        super().__init__(api.resource(), timeout=60, reactor=reactor, parsePOSTFormSubmission=False)
        self.access_log = access_log

    def log(self, request: Any) -> None:
        if self.access_log:
            super().log(request)
