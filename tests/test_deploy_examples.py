"""examples/deploy: the Kubernetes manifests pass kubernetes-validate's schemas (strict: no
unknown field) and agree with the drain they wrap; HAProxy accepts haproxy.cfg as written
(tests/e2e/test_replicas.py runs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).parents[1] / "examples" / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "k8s" / name).read_text()))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_deployment_drains_before_it_is_killed() -> None:
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    grace = float(args[args.index("--shutdown-grace") + 1])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace
    assert "--mcp-stateless" in args
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
               if "valueFrom" in e}
    assert set(secrets) == {"INFERMCP_STATE_URL", "INFERMCP_API_KEY"}
    assert set(load("secret.yaml")["stringData"]) == {r["key"] for r in secrets.values()}


def test_haproxy_accepts_the_config(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("HAProxy is not installed: run `make haproxy`", pytrace=False)
    env = {**os.environ, "INFERMCP_LISTEN": "127.0.0.1:8080", "INFERMCP_1": "127.0.0.1:8081",
           "INFERMCP_2": "127.0.0.1:8082"}
    result = subprocess.run([haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
