"""
What a real socket can throw at a node's HTTP port.
"""

from __future__ import annotations

import socket

from tests.integration.harness import Cluster


def _exchange(port: int, head: bytes, body_chunks: int = 0, chunk: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        try:
            for _ in range(body_chunks):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused early: exactly what we want
        answer = b""
        try:
            while data := s.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
        return answer


def test_huge_body_is_refused_before_it_is_read(cluster: Cluster) -> None:
    """
    A 64 MB body (the original accepted 5 MB) gets 413 at once, by its
    Content-Length; a chunked one once it passes the limit; the node counts
    nothing and stays healthy.
    """
    node = cluster.add().start().wait_up()
    size = 64 * 1024 * 1024
    head = (
        b"POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    answer = _exchange(node.port, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"error"' in answer

    chunked = b"POST /increment HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    block = b"100000\r\n" + b" " * 0x100000 + b"\r\n"  # 1 MiB chunks
    answer = _exchange(node.port, chunked, body_chunks=64, chunk=block)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    status, body = node.post("/increment", {"by": "x" * 70000})
    assert status == 413, body
    assert node.get("/health")[0] == 200
    assert node.count() == 0
