"""
What an operator sees, on real twistd processes: the status page in
headless Chromium, the dcounter command, /metrics, JSON logs, and one line
for a port in use (foreground and daemon).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import TWISTD, Cluster, Node, free_port, start_all, time_to_mesh, wait_for

REPO = Path(__file__).resolve().parents[2]


def chromium() -> str:
    """
    Debian's chromium: missing is a failure under CI, a skip elsewhere.
    """
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (apt-get install chromium); CI must run the status page test")
    pytest.skip("chromium is not installed")


def headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def converged(nodes: list[Node], expected: dict[str, int]) -> bool:
    return all(n.get("/counters")[1]["counters"] == expected for n in nodes)


def test_status_page_in_chromium(cluster: Cluster, tmp_path: Path) -> None:
    """
    The page at / of one node of three shows every member alive with the
    same counts and says the cluster has converged, once its JavaScript ran.
    """
    browser = chromium()
    nodes = cluster.mesh(3)
    start_all(nodes)
    time_to_mesh(nodes, 10)
    nodes[0].post("/increment", {"by": 5})
    nodes[1].post("/increment", {"by": 3})
    nodes[2].post("/counters/hits/increment", {"by": 2})
    wait_for(lambda: converged(nodes, {"default": 8, "hits": 2}), 10, what="counts to converge")
    url = nodes[0].url + "/"

    dom = headless(browser, tmp_path / "profile-dom", "--virtual-time-budget=3000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    rows = re.findall(r'<tr data-member="([^"]+)" data-state="([^"]+)">(.*?)</tr>', html, re.S)
    assert sorted((member, state) for member, state, _ in rows) == sorted((n.id, "alive") for n in nodes)
    for _, _, cells in rows:
        assert '<td class="num" data-counter="default">8</td>' in cells
        assert '<td class="num" data-counter="hits">2</td>' in cells
        assert cells.count('data-lag="') == 2 and ">-" not in cells  # no lag anywhere
    assert re.search(r'id="convergence" data-converged="true">Converged: all 3 members', html), html[:3000]
    assert "(this node)" in html

    shots = Path(os.environ.get("DCOUNTER_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / "status-page.png"
    taken = headless(
        browser,
        tmp_path / "profile-shot",
        "--virtual-time-budget=3000",
        "--hide-scrollbars",
        "--window-size=1100,520",
        f"--screenshot={shot}",
        url,
    )
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    print(f"status page screenshot: {shot}")

    # Quiet at the default level: no debug lines, whatever the probes did.
    for node in nodes:
        assert "#debug]" not in node.log()


def dcounter(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dcounter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_cli_against_a_cluster_and_a_dead_node(cluster: Cluster) -> None:
    nodes = cluster.mesh(3)
    start_all(nodes)
    time_to_mesh(nodes, 10)
    assert dcounter("--node", nodes[1].url, "incr", "--by", "4").stdout == "4\n"
    wait_for(lambda: converged(nodes, {"default": 4}), 10, what="counts to converge")

    status = dcounter("status", env={"DCOUNTER_URL": nodes[0].url})
    print(status.stdout)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == f"cluster {cluster.name!r} seen from {nodes[0].id} (*): converged"
    assert sorted(line.split()[0] for line in lines[2:]) == sorted(n.id for n in nodes)
    assert all(" alive " in line and " 4 " in line for line in lines[2:])

    members = dcounter("--node", nodes[2].id, "--json", "members")
    assert {m["id"] for m in json.loads(members.stdout)["members"]} == {nodes[0].id, nodes[1].id}

    dead = f"127.0.0.1:{free_port()}"
    down = dcounter("--node", dead, "status")
    print(down.stderr)
    assert down.returncode == 1
    assert down.stdout == ""
    assert down.stderr == f"dcounter: cannot reach http://{dead}: connection refused\n"


def scrape(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_of_a_real_node(cluster: Cluster) -> None:
    """/metrics parses, and moves with increments, probes and commits (SQLite)."""
    nodes = cluster.mesh(2)
    start_all(nodes)
    time_to_mesh(nodes, 10)
    before = scrape(nodes[0])
    nodes[0].post("/increment", {"by": 3})
    ok = ("dcounter_probes_total", (("outcome", "ok"),))
    after = wait_for(
        lambda: (m := scrape(nodes[0]))[ok] > before[ok] and m,
        10,
        what="another successful probe",
    )
    assert after[("dcounter_increments_total", (("counter", "default"),))] == 3
    assert after[("dcounter_store_commit_duration_seconds_count", ())] >= 1
    assert after[("dcounter_peers", (("state", "alive"),))] == 1
    assert after[("dcounter_replication_pushes_total", (("outcome", "ok"),))] >= 1


def test_json_logs(cluster: Cluster) -> None:
    (node,) = [cluster.add(args=["--log-format", "json"])]
    node.start().wait_up()
    node.post("/increment")
    node.stop()
    records = [json.loads(line) for line in node.log().splitlines()]
    assert records, "nothing logged"
    assert {"time", "level", "namespace", "message"} <= set(records[0])
    assert any(r["namespace"] == "dcounter.tap" and r.get("node_id") == node.id for r in records)
    assert all(r["level"] != "debug" for r in records)


def twistd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TWISTD, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
def test_port_in_use_is_one_line(tmp_path: Path, daemon: bool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        files = [f"--pidfile={tmp_path / 'node.pid'}", f"--logfile={tmp_path / 'node.log'}"]
        listen = f"tcp:{port}:interface=127.0.0.1"
        mode = files if daemon else ["-n"]
        result = twistd(tmp_path, *mode, "dcounter", "--listen", listen, "--in-memory", "--no-discovery")
    if result.returncode == 0 and (tmp_path / "node.pid").exists():  # it did start: stop it
        os.kill(int((tmp_path / "node.pid").read_text()), signal.SIGTERM)
    print(result.stderr)
    assert result.returncode == 1
    assert result.stderr == (
        f"dcounter: cannot listen on 127.0.0.1 port {port}: the port is in use (another dcounter node?); "
        "choose another with --port or --listen\n"
    )


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["--port", "0"], {}, "twistd dcounter: --port must be from 1 to 65535, not 0"),
        (["--health-interval", "0"], {}, "twistd dcounter: --health-interval must be at least 0.05 seconds"),
        ([], {"PEERS": "garbage"}, "twistd dcounter: $PEERS='garbage': a peer must be HOST:PORT"),
        (["--broadcast", "1.2.3"], {}, "twistd dcounter: --broadcast takes IPv4 addresses like 10.0.0.255"),
    ],
)
def test_usage_errors_under_twistd(tmp_path: Path, args: list[str], env: dict[str, str], line: str) -> None:
    result = subprocess.run(
        [*TWISTD, "-n", "dcounter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, **env},
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr


def test_twistd_dcounter_version(tmp_path: Path) -> None:
    from dcounter import __version__

    result = twistd(tmp_path, "dcounter", "--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"dcounter {__version__} (Twisted ")
