"""
docker-compose.yml really run: the scalable `extra` service at four nodes, in
a compose project of the test's own (its own bridge network, so its broadcasts
reach no other cluster; host ports chosen by Docker on 127.0.0.1).  They find
each other by broadcast alone; a killed container leaves every node's peers
and rejoins when started again, with the increments it missed.

Needs a Docker engine, docker-compose and the image (`make image`); `.ci/run`
provides all three.  Without them the test is skipped, except under CI, where
it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import http, wait_for

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("DCOUNTER_IMAGE", "dcounter:latest")


def docker_ready() -> str | None:
    """Why compose cannot run here, or None."""
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        return "needs docker and docker-compose"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine answers"
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        return f"no image {IMAGE}: make image"
    return None


class Project:
    def __init__(self) -> None:
        self.name = "dctest" + uuid.uuid4().hex[:8]

    def compose(self, *args: str, timeout: float = 120) -> str:
        command = ["docker-compose", "-p", self.name, "--profile", "extra", *args]
        env = {**os.environ, "DCOUNTER_IMAGE": IMAGE}
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        assert result.returncode == 0, f"{' '.join(command)}: {result.stderr[-2000:]}"
        return result.stdout

    def containers(self) -> dict[str, str]:
        """Each running `extra` container's id and its URL on the host."""
        ids = self.compose("ps", "-q", "extra").split()
        urls = {}
        for c in json.loads(
            subprocess.run(["docker", "inspect", *ids], capture_output=True, check=True).stdout
        ):
            bindings = (c["NetworkSettings"]["Ports"] or {}).get("8080/tcp") or []
            if c["State"]["Running"] and bindings:
                urls[c["Id"]] = f"http://127.0.0.1:{bindings[0]['HostPort']}"
        return urls


@pytest.fixture
def project() -> Iterator[Project]:
    reason = docker_ready()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"compose test under CI: {reason}")
        pytest.skip(reason)
    p = Project()
    try:
        yield p
    finally:
        p.compose("down", "-v", "--remove-orphans")


def node_id(url: str) -> str:
    status, body = http("GET", url + "/health", timeout=2)
    assert status == 200, body
    return str(body["node_id"])


def meshed(urls: list[str]) -> bool:
    ids = {url: node_id(url) for url in urls}
    return all(
        set(http("GET", url + "/peers", timeout=2)[1]) == set(ids.values()) - {ids[url]} for url in urls
    )


def counts(urls: list[str]) -> list[int]:
    return [http("GET", url + "/count", timeout=2)[1]["count"] for url in urls]


def test_four_scaled_nodes_mesh_and_a_killed_one_leaves_and_rejoins(project: Project) -> None:
    project.compose("up", "-d", "--no-build", "--scale", "extra=4", "extra")
    urls_by_container = wait_for(lambda: len(project.containers()) == 4 and project.containers(), 30)
    urls = list(urls_by_container.values())
    wait_for(lambda: meshed(urls), 60, interval=0.2, what="4 compose nodes to list each other")

    # Kill one: the others drop it from /peers, and keep counting without it.
    victim, victim_url = next(iter(urls_by_container.items()))
    victim_id = node_id(victim_url)
    others = [u for u in urls if u != victim_url]
    subprocess.run(["docker", "kill", victim], capture_output=True, check=True)
    wait_for(
        lambda: all(victim_id not in http("GET", u + "/peers", timeout=2)[1] for u in others),
        20,
        interval=0.2,
        what=f"{victim_id} to leave the others' peers",
    )
    for url in others:
        assert http("POST", url + "/increment")[0] == 200

    # Start it again (same container, same volume): it rejoins and catches up.
    subprocess.run(["docker", "start", victim], capture_output=True, check=True)
    victim_url = wait_for(lambda: project.containers().get(victim), 30, what="the container to run again")
    urls = [*others, victim_url]
    wait_for(lambda: meshed(urls), 60, interval=0.2, what=f"{victim_id} to rejoin")
    wait_for(lambda: counts(urls) == [3, 3, 3, 3], 30, interval=0.2, what="the restarted node to catch up")
