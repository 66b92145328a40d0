"""
Requests a stranger can send to a node whatever its keys: none may freeze,
corrupt or crash it (issue 8, "whatever the mode").
"""

from __future__ import annotations

import socket

from tests.integration.harness import Cluster

MAX_INT64 = 2**63 - 1


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while data := s.recv(65536):
            answer += data
        return answer


def test_legacy_sync_to_int64_max_does_not_stop_increments(cluster: Cluster) -> None:
    """
    The original's POST /sync {"count": 2^63-1} used to put this node's own
    slot at its ceiling: every later increment answered 409 until the data
    directory was wiped.  Now the count is refused (400) and increments go on.
    """
    node = cluster.add().start().wait_up()
    assert node.post("/increment")[0] == 200
    status, body = node.post("/sync", {"count": MAX_INT64})
    print(f"\nPOST /sync {{'count': 2^63-1}} -> {status} {body}")
    for _ in range(3):
        answer = node.post("/increment")
        print(f"POST /increment -> {answer[0]} {answer[1]}")
        assert answer[0] == 200, answer
    assert 400 <= status < 500, body
    assert node.count() == 4
    # The legacy sync still does its job within range.
    assert node.post("/sync", {"count": 1000})[0] == 200
    assert node.post("/increment")[0] == 200
    assert node.count() == 1001


def test_edge_cases_are_json_4xx_and_change_nothing(cluster: Cluster) -> None:
    """
    A path that is not UTF-8, duplicate JSON keys, an IPv6 peer id and one
    counter too many: each a JSON 4xx, nothing counted, no traceback logged.
    """
    node = cluster.add(args=["--max-counters", "2"]).start().wait_up()
    answer = _raw(node.port, b"POST /counters/%FF/increment HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"application/json" in answer and b'"error"' in answer
    body = b'{"by":1,"by":1000}'
    answer = _raw(
        node.port,
        b"POST /increment HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body),
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    status, body = node.post("/register", {"id": "[::1]:9089"})
    assert status == 400, body
    assert node.post("/counters/a/increment")[0] == 200
    assert node.post("/counters/b/increment")[0] == 200
    status, body = node.post("/counters/c/increment")
    assert status == 409 and "at most 2" in body["error"], body
    assert node.post("/increment")[0] == 200  # 'default' is not one of the named counters
    assert node.get("/counters")[1]["counters"] == {"a": 1, "b": 1, "default": 1}
    assert "Traceback" not in node.log()
