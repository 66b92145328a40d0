"""
Must-show 1 of issue 8: what a host that does not hold the cluster key can
do to a cluster that does (nothing), and, the same run without a key, what
it could do before (everything), so that the key is what stops it.

The test process is the stranger.  It captures genuine traffic on the wire
(a UDP socket on the discovery port hears every broadcast; a TCP proxy in
front of one node records the syncs it receives) and replays it, forges
state and announcements, calls the operator endpoints without a token, and
floods the discovery port with junk.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Cluster, all_listed, free_port, free_ports, http, start_all, wait_for

KEY = "the-cluster-key-0123456789"
WRONG_KEY = "not-the-cluster-key-987654"


class Stranger:
    """
    An HTTP server that answers /health as a dcounter node of the cluster
    (unsigned: it has no key) and takes any /sync: what a stranger needs
    to become a peer of an unkeyed cluster.
    """

    def __init__(self, cluster: str) -> None:
        self.port = free_port()
        self.id = f"127.0.0.1:{self.port}"
        hello = json.dumps({"status": "ok", "node_id": self.id, "incarnation": "evil", "cluster": cluster})

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: str) -> None:
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(hello if self.path == "/health" else "{}")

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer('{"ok":true}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RecordingProxy:
    """
    A TCP proxy in front of a node: what reaches the node through it is
    recorded, request bytes only.
    """

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.target_port = target_port
        self.recorded = bytearray()
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", listen_port))
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self.recorded += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def requests(self, head: bytes) -> list[bytes]:
        """
        Every whole recorded request starting with C{head} (by its
        Content-Length), raw.
        """
        with self._lock:
            data = bytes(self.recorded)
        found = []
        start = data.find(head)
        while start != -1:
            end_of_head = data.find(b"\r\n\r\n", start)
            if end_of_head == -1:
                break
            length = 0
            for line in data[start:end_of_head].split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = end_of_head + 4 + length
            if end <= len(data):
                found.append(data[start:end])
            start = data.find(head, end)
        return found

    def close(self) -> None:
        self.sock.close()


def _udp_listener(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", port))
    s.settimeout(10)
    return s


def _send_udp(datagrams: list[bytes], port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for d in datagrams:
            s.sendto(d, ("127.255.255.255", port))


def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.replace(b"\r\n", b"\r\nConnection: close\r\n", 1))
        answer = b""
        while data := s.recv(65536):
            answer += data
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer


def _signed_with(key: str, sender: str, body: bytes, to: str) -> str:
    """A signature as a node would make it, but with C{key}."""
    from dcounter import keyring, wire

    guard = keyring.Guard(keyring.Keyring([key]), sender)
    auth = guard.seal(keyring.request_context("POST", "/sync", to), body, time.time())
    return wire.encode_auth(auth)


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _snapshot(nodes: list[Any]) -> list[Any]:
    return [(n.get("/counters")[1]["counters"], sorted(n.peers())) for n in nodes]


@pytest.mark.parametrize("keyed", [True, False], ids=["with-key", "without-key"])
def test_a_stranger_changes_nothing_with_a_key(tmp_path: Path, keyed: bool) -> None:
    cluster = Cluster(tmp_path, discovery=True)
    capture = _udp_listener(cluster.discovery_port)
    stranger = Stranger(cluster.name)
    ports = free_ports(4)
    proxied, real = ports[2], ports[3]
    proxy = RecordingProxy(proxied, real)
    try:
        ids = [f"127.0.0.1:{p}" for p in ports[:3]]
        extra = ["--secret", KEY] if keyed else []
        nodes = [
            cluster.add(p, peers=[i for i in ids if i != ids[k]], args=extra) for k, p in enumerate(ports[:3])
        ]
        # The third node is reached through the proxy: its id is the proxy's.
        nodes[2].args += ["--listen", f"tcp:{real}:interface=127.0.0.1"]
        start_all(nodes)
        wait_for(lambda: all_listed(nodes), 15, what="the cluster to mesh")
        for k, node in enumerate(nodes):
            assert node.post("/increment", {"by": 10 * (k + 1)})[0] == 200
            assert node.post("/counters/hits/increment")[0] == 200
        wait_for(
            lambda: all(n.get("/counters")[1]["counters"] == {"default": 60, "hits": 3} for n in nodes),
            10,
            what="every node to read default 60, hits 3",
        )
        a, b, c = nodes

        # Genuine traffic, captured: an announcement, and syncs to c.
        announcement = b""
        while a.id.encode() not in announcement:
            announcement, _ = capture.recvfrom(2048)
        syncs = wait_for(lambda: proxy.requests(b"POST /sync "), 10, what="a sync to c on the wire")
        before = _snapshot(nodes)
        answers: dict[str, Any] = {}

        # 1. A forged state push in a member's name (a's), inflating a's slot.
        replica = f"{a.id}/{a.get('/health')[1]['incarnation']}"
        forged = json.dumps(
            {
                "from": a.id,
                "incarnation": a.get("/health")[1]["incarnation"],
                "cluster": cluster.name,
                "state": {"default": {replica: [10**15, 0]}, "ghost": {replica: [2**62, 0]}},
                "members": [stranger.id],
            }
        ).encode()
        answers["forged sync, unsigned"] = _post(
            b.url + "/sync", forged, {"Content-Type": "application/json"}
        )
        answers["forged sync, signed with a wrong key"] = _post(
            b.url + "/sync",
            forged,
            {
                "Content-Type": "application/json",
                "X-Dcounter-Auth": _signed_with(WRONG_KEY, a.id, forged, b.id),
            },
        )
        # 2. A forged announcement of the stranger; 3. a genuine one, replayed.
        forged_announcement = json.dumps(
            {
                "dcounter": 1,
                "kind": "announce",
                "cluster": cluster.name,
                "node_id": stranger.id,
                "http": stranger.id,
                "incarnation": "evil",
            }
        ).encode()
        _send_udp([forged_announcement, announcement, announcement], cluster.discovery_port)
        # 4. A genuine sync, replayed to the node it was sent to.
        answers["replayed sync"] = _raw(real, syncs[0])[0]
        # 5. The operator endpoints, with no token.
        answers["/register stranger"] = http("POST", a.url + "/register", {"id": stranger.id})[0]
        answers["/remove-peer b"] = http("POST", a.url + "/remove-peer", {"id": b.id})[0]
        answers["legacy /sync 10^9"] = http("POST", b.url + "/sync", {"count": 10**9})[0]
        answers["legacy /sync with a wrong bearer"] = _post(
            b.url + "/sync", b'{"count":1000000000}', {"Authorization": "Bearer " + "x" * 64}
        )
        # 6. A flood of junk datagrams.
        rng = random.Random(8)
        junk = [os.urandom(rng.randint(0, 1500)) for _ in range(2000)]
        junk += [announcement[: rng.randint(0, len(announcement))] for _ in range(200)]
        junk += [announcement.replace(b"mac=", b"mac=0") for _ in range(10)]
        _send_udp(junk, cluster.discovery_port)

        time.sleep(3.0)  # two health and anti-entropy rounds: time for any harm to show
        after = _snapshot(nodes)
        print(f"\n{'with' if keyed else 'without'} a key: answers {answers}")
        print(f"before: {before}\nafter:  {after}")
        for n in nodes:
            info = n.get("/discovery")[1]
            print(f"{n.id}: datagrams {info['datagrams']}, auth {info['auth']['dropped']}")
        health = [n.get("/health") for n in nodes]
        assert all(status == 200 and body["status"] == "ok" for status, body in health)
        if keyed:
            assert after == before, "a stranger changed something"
            assert all(stranger.id not in n.peers() for n in nodes)
            assert set(answers.values()) == {401}, answers
            dropped_udp = a.get("/discovery")[1]["auth"]["dropped"]["udp"]
            assert dropped_udp.get("unsigned", 0) >= 1 and dropped_udp.get("replayed", 0) >= 1, dropped_udp
            assert b.get("/discovery")[1]["auth"]["dropped"]["http"].get("unknown_key", 0) >= 1
            assert c.get("/discovery")[1]["auth"]["dropped"]["http"].get("replayed", 0) >= 1
        else:
            # Today's behaviour: the same requests change the cluster.
            assert answers["/register stranger"] == 200
            assert answers["/remove-peer b"] == 200
            assert answers["legacy /sync 10^9"] == 200
            assert answers["replayed sync"] == 200
            assert b.count() >= 10**9
            assert stranger.id in a.peers()
            assert b.id not in a.peers()
            assert after != before
    finally:
        cluster.stop()
        capture.close()
        stranger.close()
        proxy.close()
