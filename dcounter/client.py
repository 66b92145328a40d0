# -*- test-case-name: tests.test_replication -*-
"""
The client side of the node-to-node protocol: how this node speaks to a peer.

One home for peer URLs, timeouts and response checks, so that the health
checker and the replicator share them.  C{http} is anything with treq's
C{request} signature: a real C{treq.client.HTTPClient} in the daemon, a
C{treq.testing.StubTreq} in unit tests.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet.defer import Deferred, succeed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from dcounter import keyring, wire
from dcounter.metrics import Metrics, sync_size

#: The largest answer taken from a peer: a whole-state sync reply at most.
MAX_RESPONSE = wire.MAX_SYNC_BODY


class PeerError(Exception):
    """
    A peer answered, but not as a dcounter node should.

    @ivar code: the HTTP status it answered with, if that was the trouble.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body written whole as soon as the request is: treq's default,
    a FileBodyProducer, writes it from a cooperative task a reactor turn
    later, in chunks.  For treq's C{HTTPClient(data_to_body_producer=...)}.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def peer_url(address: str, path: str) -> str:
    return f"http://{address}{path}"


class AgentRequests:
    """
    The part of treq's C{HTTPClient.request} that L{PeerClient} uses, straight
    on an C{Agent}: for replication's pushes and digests, the most frequent
    peer requests.  treq's C{request} parses the URL with hyperlink and
    IDNA-encodes its host (95 us a request here), and wraps the agent in a
    C{CookieAgent} and a C{ContentDecoderAgent}: py-spy put that at a fifth
    of a writer's CPU per replicated increment.  A peer URL is built here
    (L{peer_url}), no peer sets cookies, and none compresses.  The agent is
    the HTTPClient's own, so both share one connection pool.
    """

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, list[str]] | None = None,
        data: bytes | None = None,
        **_: Any,
    ) -> Deferred[IResponse]:
        """
        Like treq's: the keyword arguments L{PeerClient} passes besides
        these (no redirects, unbuffered, the reactor) are what this does.
        """
        return self._agent.request(
            method.encode("ascii"),
            url.encode("ascii"),
            Headers(headers or {}),
            BytesProducer(data) if data else None,
        )


class PeerClient:
    """
    With a L{keyring.Guard} whose keyring holds keys, every request is
    signed and every answer must carry a valid MAC bound to its request.
    """

    def __init__(
        self,
        http: Any,
        clock: Any,
        timeout: float = 1.0,
        max_response: int = MAX_RESPONSE,
        metrics: Metrics | None = None,
        guard: keyring.Guard | None = None,
        replication_http: Any = None,
    ) -> None:
        """
        @param replication_http: what pushes and digests go through, if not
            C{http} (L{AgentRequests}, in the daemon).
        """
        self._http = http
        self._replication_http = replication_http if replication_http is not None else http
        self.metrics = metrics if metrics is not None else Metrics()
        self._clock = clock
        self.timeout = timeout
        self.max_response = max_response
        self.guard = guard

    async def _call(
        self,
        method: str,
        address: str,
        path: str,
        body: bytes = b"",
        to: str = "",
        signed: bool = True,
        replication: bool = False,
        query: str = "",
    ) -> tuple[bytes, wire.Auth | None]:
        """
        @param to: the node id the request is for, bound into its MAC (""
            for a request any node may take).
        @param query: a query string for the URL ("?..."); the MAC binds the
            path only, as the receiver checks it.  What the query asks for
            must be checked in the signed answer.
        @param signed: with a key, sign the request and take only a signed
            answer (a node-to-node message); else a plain client's read.
        @return: the answer's body, and its verified signature (None when
            no key is set, or not C{signed}).
        """
        headers: dict[str, list[str]] = {}
        request_auth = None
        guard = self.guard if signed and self.guard is not None and self.guard.enabled else None
        if guard is not None:
            now = self._clock.seconds()
            request_auth = guard.seal(keyring.request_context(method, path, to), body, now)
            headers[wire.AUTH_HEADER] = [wire.encode_auth(request_auth)]
        if body:
            headers["Content-Type"] = ["application/json"]
        http = self._replication_http if replication else self._http
        response = await http.request(
            method,
            peer_url(address, path + query),
            reactor=self._clock,
            allow_redirects=False,
            unbuffered=True,
            headers=headers,
            **({"data": body} if body else {}),
        )
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > self.max_response:
                raise PeerError(f"{address}{path} sent more than {self.max_response} bytes")
            chunks.append(data)

        await treq.collect(response, collect)
        if response.code != 200:
            # Not the body: an address we were asked to probe may be anything.
            raise PeerError(f"{address}{path} answered {response.code}", response.code)
        answer = b"".join(chunks)
        if guard is None or request_auth is None:
            return answer, None
        raw = response.headers.getRawHeaders(wire.AUTH_HEADER, [None])[0]
        try:
            auth = None if raw is None else wire.decode_auth(raw)
        except wire.MalformedMessage:
            guard.refused("http", "malformed")
            raise PeerError(f"{address}{path} answered with a malformed signature") from None
        try:
            guard.check(
                "http",
                keyring.response_context(response.code, request_auth),
                auth,
                answer,
                self._clock.seconds(),
                replay=False,
            )
        except keyring.Refused as e:
            raise PeerError(f"{address}{path} answered without a valid MAC ({e.reason})") from None
        return answer, auth

    def _deadline(self, call: Any, timeout: float | None) -> Deferred[Any]:
        """
        Run a call to a peer with one deadline for all of it, the body
        included: a peer that sends headers and then stalls is cut off too.
        """
        return Deferred.fromCoroutine(call).addTimeout(timeout or self.timeout, self._clock)

    def hello(self, address: str, timeout: float | None = None) -> Deferred[wire.Hello]:
        """
        Ask C{address} who it is (GET /health).
        """

        async def go() -> wire.Hello:
            body, auth = await self._call("GET", address, "/health")
            try:
                hello = wire.decode_hello(body)
            except wire.MalformedMessage as e:
                raise PeerError(f"{address} is not a dcounter node: {e}") from None
            if auth is None:
                return hello
            if auth.sender != hello.node_id:
                raise PeerError(f"{address} signed as another node than it says it is")
            return wire.Hello(hello.node_id, hello.incarnation, hello.cluster, signed_by=auth.key_id)

        return self._deadline(go(), timeout)

    def sync(self, address: str, message: wire.Sync) -> Deferred[wire.Sync | None]:
        """
        Send our state (POST /sync); if C{message.reply}, return the peer's.

        A sync with a reply is an anti-entropy push-pull, one without a push:
        each is counted in the metrics, with the bytes of a push-pull.
        """
        encoded = wire.encode_sync(message)

        async def go() -> wire.Sync | None:
            data = json.dumps(encoded, separators=(",", ":")).encode()
            body, _ = await self._call("POST", address, "/sync", data, to=address, replication=True)
            if not message.reply:
                return None
            try:
                reply = wire.sync_from_json(wire.json_object(body))
            except wire.MalformedMessage as e:
                raise PeerError(f"{address} sent a bad sync reply: {e}") from None
            self.metrics.exchange(True, sync_size(encoded), len(body))
            return reply

        def failed(reason: Any) -> Any:
            if message.reply:
                self.metrics.exchange(False, sync_size(encoded), 0)
            else:
                self.metrics.push(False, sync_size(encoded))
            return reason

        def pushed(result: wire.Sync | None) -> wire.Sync | None:
            if not message.reply:
                self.metrics.push(True, sync_size(encoded))
            return result

        return self._deadline(go(), None).addCallbacks(pushed, failed)

    def digest(
        self, address: str, message: wire.Digest, buckets: int, keys_before: float | None = None
    ) -> Deferred[wire.DigestReply]:
        """
        Open a digest anti-entropy round (POST /digest): send our summary,
        return the peer's answer.  Counted in the metrics as a push-pull,
        with the bytes of both bodies.  A peer that does not know the path
        (an older node) fails with a L{PeerError} of code 404.

        @param keys_before: ask for the digest of the peer's idempotency
            keys with no entry after this time, and the newer ones that
            write the counters it sends (C{?keys_before=}: a node older than
            this ignores it, and echoes nothing).
        """
        data = json.dumps(wire.encode_digest(message), separators=(",", ":")).encode()
        query = "" if keys_before is None else f"?keys_before={keys_before!r}"

        async def go() -> wire.DigestReply:
            body, auth = await self._call(
                "POST", address, "/digest", data, to=address, replication=True, query=query
            )
            try:
                reply = wire.decode_digest_reply(body, buckets)
            except wire.MalformedMessage as e:
                raise PeerError(f"{address} sent a bad digest reply: {e}") from None
            if auth is not None and auth.sender != reply.sender:
                raise PeerError(f"{address} signed a digest reply in the name of {reply.sender}")
            self.metrics.exchange(True, len(data), len(body))
            return reply

        def failed(reason: Any) -> Any:
            self.metrics.exchange(False, len(data), 0)
            return reason

        return self._deadline(go(), None).addErrback(failed)

    def probe_through(
        self, address: str, request: wire.ProbeRequest, timeout: float | None = None
    ) -> Deferred[wire.ProbeAnswer]:
        """
        Ask C{address} to probe C{request.target} for us (POST /probe):
        SWIM's indirect probe.  Fails if the helper itself does not answer.
        """

        async def go() -> wire.ProbeAnswer:
            data = json.dumps(wire.encode_probe_request(request), separators=(",", ":")).encode()
            body, _ = await self._call("POST", address, "/probe", data, to=address)
            try:
                return wire.decode_probe_answer(body)
            except wire.MalformedMessage as e:
                raise PeerError(f"{address} sent a bad probe answer: {e}") from None

        return self._deadline(go(), timeout)

    def counters(self, address: str) -> Deferred[dict[str, int]]:
        """
        Read a peer's counters (GET /counters), for the status page.
        """

        async def go() -> dict[str, int]:
            # A client's read, for display: not part of the cluster protocol.
            body, _ = await self._call("GET", address, "/counters", signed=False)
            try:
                values = wire.json_object(body).get("counters")
                if not isinstance(values, dict) or not all(
                    isinstance(k, str) and type(v) is int for k, v in values.items()
                ):
                    raise wire.MalformedMessage("counters must map names to integers")
            except wire.MalformedMessage as e:
                raise PeerError(f"{address} sent bad counters: {e}") from None
            return values

        return self._deadline(go(), None)
