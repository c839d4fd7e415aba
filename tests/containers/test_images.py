"""The server and client images: user, entry points, pins and health check."""

from __future__ import annotations

import importlib.util
import json
import re
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import NAME_PREFIX, REPO_ROOT, Images, run_command

# The first test builds the images, which takes minutes on a cold cache.
pytestmark = pytest.mark.timeout(900)

APP_UID = "10001"
HEALTHCHECK_PATH = "/usr/local/lib/server_app/healthcheck.py"
HEALTHCHECK_WAIT_SECONDS = 60
# Prints every distribution in the image's virtualenv as {name: version}.
LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
)


def inspect_image(tag: str) -> dict[str, Any]:
    """Return `docker image inspect` of ``tag``."""
    result = run_command(["docker", "image", "inspect", tag])
    inspected: list[dict[str, Any]] = json.loads(result.stdout)
    return inspected[0]


def read_pins(requirements: Path) -> dict[str, str]:
    """Map each package in a pip-compile output file to its pinned version."""
    pins = {}
    for line in requirements.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[normalize(match[1])] = match[2]
    return pins


def normalize(name: str) -> str:
    """Normalize a distribution name as PEP 503 does."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_healthcheck() -> ModuleType:
    """Import the server image's health check script from the source tree."""
    path = REPO_ROOT / "server_app" / "docker" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("server_healthcheck", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("app", ["server", "client"])
def test_image_runs_as_non_root(images: Images, app: str) -> None:
    tag = getattr(images, app)
    uid = run_command(
        ["docker", "run", "--rm", "--pull=never", "--entrypoint", "id", tag, "-u"]
    )
    gid = run_command(
        ["docker", "run", "--rm", "--pull=never", "--entrypoint", "id", tag, "-g"]
    )

    assert uid.stdout.strip() == APP_UID
    assert gid.stdout.strip() == APP_UID
    assert inspect_image(tag)["Config"]["User"] == f"{APP_UID}:{APP_UID}"


def test_server_image_runs_gunicorn(images: Images) -> None:
    config = inspect_image(images.server)["Config"]

    assert config["Entrypoint"] is None
    assert config["Cmd"] == [
        "gunicorn",
        "--config",
        "python:server_app.gunicorn_conf",
        "server_app.wsgi:app",
    ]
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", HEALTHCHECK_PATH]
    assert "PROMETHEUS_MULTIPROC_DIR=/run/server_app/metrics" in config["Env"]
    assert "GUNICORN_BIND=0.0.0.0:8080" in config["Env"]


def test_client_image_runs_client(images: Images) -> None:
    config = inspect_image(images.client)["Config"]

    assert config["Entrypoint"] is None
    assert config["Cmd"] == ["ratelimit-client"]


@pytest.mark.parametrize("app", ["server", "client"])
def test_image_installs_pinned_versions(images: Images, app: str) -> None:
    tag = getattr(images, app)
    listed = run_command(
        [
            "docker",
            "run",
            "--rm",
            "--pull=never",
            "--entrypoint",
            "/opt/venv/bin/python",
            tag,
            "-c",
            LIST_DISTRIBUTIONS,
        ]
    )
    installed = {
        normalize(name): version for name, version in json.loads(listed.stdout).items()
    }
    pins = read_pins(REPO_ROOT / f"{app}_app" / "requirements.txt")

    assert pins
    for name, version in pins.items():
        assert installed.get(name) == version, name
    assert installed[f"{app}-app"] == "1.0.0"


def test_image_has_curl(images: Images) -> None:
    for tag in (images.server, images.client):
        result = run_command(
            [
                "docker",
                "run",
                "--rm",
                "--pull=never",
                "--entrypoint",
                "curl",
                tag,
                "--version",
            ]
        )
        assert result.stdout.startswith("curl "), tag


@pytest.mark.parametrize(
    ("bind", "url"),
    [
        ("0.0.0.0:80", "http://127.0.0.1:80/healthz"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080/healthz"),
        ("[::]:8080", "http://[::1]:8080/healthz"),
        ("127.0.0.2:9000", "http://127.0.0.2:9000/healthz"),
    ],
)
def test_healthcheck_url_from_bind(bind: str, url: str) -> None:
    assert load_healthcheck().healthz_url(bind) == url


@pytest.mark.parametrize("bind", ["unix:/run/server.sock", "0.0.0.0", "host:http"])
def test_healthcheck_rejects_bind(bind: str) -> None:
    with pytest.raises(ValueError, match="invalid GUNICORN_BIND"):
        load_healthcheck().healthz_url(bind)


def test_healthcheck_fails_without_redis(images: Images) -> None:
    """The health check reports 503 while the server cannot reach Redis."""
    name = f"{NAME_PREFIX}test-noredis-{uuid.uuid4().hex[:8]}"
    # Nothing listens on port 1, so every Redis connection is refused.
    redis_url = "redis://:password@127.0.0.1:1/0"
    run_command(
        [
            "docker",
            "run",
            "--pull=never",
            "--detach",
            "--name",
            name,
            "--env",
            f"REDIS_URL={redis_url}",
            images.server,
        ]
    )
    try:
        deadline = time.monotonic() + HEALTHCHECK_WAIT_SECONDS
        while True:
            result = run_command(
                ["docker", "exec", name, "python3", HEALTHCHECK_PATH], check=False
            )
            if "returned" in result.stdout or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert result.returncode == 1
        assert result.stdout.strip() == "GET http://127.0.0.1:8080/healthz returned 503"
    finally:
        run_command(["docker", "rm", "--force", name], check=False)
