"""
Keyed writes for the integration and fault tests: POST with an
Idempotency-Key, from the test's host or from inside a node's namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.harness import Node


def keyed_post(url: str, key: str, body: object = None, timeout: float = 10.0) -> tuple[int, Any, str | None]:
    """
    POST C{body} with C{Idempotency-Key: key}.

    @return: (status, JSON answer, the Idempotent-Replayed header or None).
    """
    data = b"" if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Idempotency-Key", key)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers.get("Idempotent-Replayed")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), e.headers.get("Idempotent-Replayed")


def keyed(node: Node, path: str, key: str, body: object = None) -> tuple[int, Any, str | None]:
    return keyed_post(node.url + path, key, body)


def keyed_from_inside(node: Node, path: str, key: str, body: object = None) -> tuple[int, Any, str | None]:
    """L{keyed}, made from the node's own network namespace."""
    script = (
        "import json, sys; from tests.integration.keyed import keyed_post; "
        "print(json.dumps(keyed_post(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))))"
    )
    result = subprocess.run(
        [*node.prefix, sys.executable, "-c", script, node.url + path, key, json.dumps(body)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=30,
    )
    if result.returncode != 0:
        raise RuntimeError(f"keyed request from inside {node.id} failed: {result.stderr[-1000:]}")
    status, answer, replayed = json.loads(result.stdout)
    return status, answer, replayed
