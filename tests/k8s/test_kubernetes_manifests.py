"""The Kubernetes manifests: schemas, kustomization and security settings.

Every manifest is validated offline against the Kubernetes JSON schemas that
the kubernetes-validate package carries. When `kubectl` (it embeds
kustomize) or `kustomize` is on PATH, the kustomize build is rendered and
validated as well.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST_DIR = REPO_ROOT / "kubernetes"
KUSTOMIZATION = MANIFEST_DIR / "kustomization.yaml"
# The client Job's backoffLimitPerIndex is generally available from Kubernetes
# 1.33 on, so that is the oldest version validated. 1.35 is a recent release.
KUBERNETES_VERSIONS = ("1.33.0", "1.35.0")
NAMESPACE = "ratelimit"


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Parse every YAML document in ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_paths() -> list[Path]:
    """Return every manifest file except the kustomization."""
    return sorted(path for path in MANIFEST_DIR.glob("*.yaml") if path != KUSTOMIZATION)


def all_resources() -> list[dict[str, Any]]:
    """Return every resource of every manifest file."""
    return [doc for path in manifest_paths() for doc in load_documents(path)]


def resource(kind: str, name: str) -> dict[str, Any]:
    """Return the one resource of ``kind`` called ``name``."""
    (found,) = [
        doc
        for doc in all_resources()
        if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    return found


def pod_specs(resources: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield the name and pod spec of each Deployment and Job."""
    for doc in resources:
        if doc["kind"] in {"Deployment", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def dockerfile_uid(app: str) -> int:
    """Return the APP_UID default that the app's Dockerfile sets."""
    text = (REPO_ROOT / app / "Dockerfile").read_text()
    match = re.search(r"^ARG APP_UID=(\d+)$", text, re.MULTILINE)
    assert match is not None, f"{app}/Dockerfile sets no ARG APP_UID"
    return int(match[1])


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """Render the kustomize build of ``directory`` with kubectl or kustomize."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    else:
        pytest.skip("neither kubectl nor kustomize is on PATH")
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_paths(), ids=lambda path: path.name)
def test_manifest_matches_schema(path: Path, version: str) -> None:
    documents = load_documents(path)

    assert documents
    for document in documents:
        # Raises ValidationError that names the field. Strict mode also
        # rejects fields that the schema does not define.
        kubernetes_validate.validate(document, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = load_documents(KUSTOMIZATION)[0]["resources"]

    assert sorted(listed) == [path.name for path in manifest_paths()]


def test_kustomization_images_match_manifests() -> None:
    overrides = {
        image["name"]: f"{image['newName']}:{image['newTag']}"
        for image in load_documents(KUSTOMIZATION)[0]["images"]
    }
    used = {
        container["image"]
        for _, spec in pod_specs(all_resources())
        for container in spec["containers"]
    }

    assert {image.partition(":")[0] for image in used} == set(overrides)
    assert used == set(overrides.values())


def test_server_deployment_settings() -> None:
    deployment = resource("Deployment", "ratelimit-server")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    config = resource("ConfigMap", "server-config")["data"]
    service = resource("Service", "server")

    assert deployment["spec"]["replicas"] == 2
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert config["GUNICORN_BIND"] == "0.0.0.0:8080"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http"}
    ]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    env = {item["name"]: item for item in container["env"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"]["value"] in mounts
    assert "/tmp" in mounts


def test_redis_password_from_secret() -> None:
    secret = resource("Secret", "redis-auth")
    (redis,) = resource("Deployment", "redis")["spec"]["template"]["spec"]["containers"]
    (server,) = resource("Deployment", "ratelimit-server")["spec"]["template"]["spec"][
        "containers"
    ]
    server_env = {item["name"]: item for item in server["env"]}
    redis_env = {item["name"]: item for item in redis["env"]}
    secret_ref = {"secretKeyRef": {"name": "redis-auth", "key": "password"}}

    assert "password" in secret["stringData"]
    assert redis_env["REDIS_PASSWORD"]["valueFrom"] == secret_ref
    assert "$(REDIS_PASSWORD)" in redis["args"]
    assert server_env["REDIS_PASSWORD"]["valueFrom"] == secret_ref
    assert server_env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
    # Kubernetes expands $(NAME) only for variables defined earlier in the list.
    names = [item["name"] for item in server["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")


def test_redis_network_policy_admits_server() -> None:
    policy = resource("NetworkPolicy", "redis")["spec"]
    redis = resource("Deployment", "redis")["spec"]["template"]["metadata"]
    server = resource("Deployment", "ratelimit-server")["spec"]["template"]["metadata"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]

    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= redis["labels"].items()
    assert source["podSelector"]["matchLabels"].items() <= server["labels"].items()
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]


def test_client_job_settings() -> None:
    job = resource("Job", "ratelimit-client")
    config = resource("ConfigMap", "client-config")["data"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    actions_by_exit_code = {
        code: rule["action"]
        for rule in rules
        if "onExitCodes" in rule
        for code in rule["onExitCodes"]["values"]
    }

    assert job["spec"]["parallelism"] == job["spec"]["completions"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert actions_by_exit_code == {3: "FailIndex", 2: "FailJob"}
    assert config == {
        "CLIENT_SERVER_URL": "http://server:80/",
        "CLIENT_TOTAL_REQUESTS": "7",
        "CLIENT_TOTAL_FAILURE_RETRIES": "4",
        "CLIENT_BACKOFF_FACTOR": "1",
    }


@pytest.mark.parametrize(
    ("name", "spec"),
    [pytest.param(name, spec, id=name) for name, spec in pod_specs(all_resources())],
)
def test_pod_security_restricted(name: str, spec: dict[str, Any]) -> None:
    pod_context = spec["securityContext"]

    assert pod_context["runAsNonRoot"] is True
    assert pod_context["runAsUser"] > 0
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert set(container["resources"]) == {"requests", "limits"}, container["name"]


def test_pod_uid_matches_dockerfile() -> None:
    server = resource("Deployment", "ratelimit-server")["spec"]["template"]["spec"]
    client = resource("Job", "ratelimit-client")["spec"]["template"]["spec"]

    assert server["securityContext"]["runAsUser"] == dockerfile_uid("server_app")
    assert client["securityContext"]["runAsUser"] == dockerfile_uid("client_app")


def test_kustomize_build_renders() -> None:
    rendered = render_kustomization(MANIFEST_DIR)

    assert len(rendered) == len(all_resources())
    for document in rendered:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == NAMESPACE, document["kind"]
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)


def test_kustomize_images_override(tmp_path: Path) -> None:
    manifests = tmp_path / "kubernetes"
    shutil.copytree(MANIFEST_DIR, manifests)
    kustomization = load_documents(manifests / "kustomization.yaml")[0]
    for image in kustomization["images"]:
        image["newName"] = f"registry.example.com/team/{image['name']}"
        image["newTag"] = "2.0.0"
    (manifests / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))

    rendered = render_kustomization(manifests)
    used = {
        container["image"]
        for _, spec in pod_specs(rendered)
        for container in spec["containers"]
    }

    assert used == {
        "registry.example.com/team/ratelimit-server:2.0.0",
        "registry.example.com/team/ratelimit-client:2.0.0",
        "registry.example.com/team/redis:2.0.0",
    }
