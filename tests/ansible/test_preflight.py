"""Test that site.yml stops in preflight, before any host changes.

Each case runs the whole site.yml with one bad extra variable against an idle
container, which needs no systemd because nothing may run on it. The case
checks the exit status, the message naming the variable and value, and the
recap, and `docker diff` must show that no file in the container changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("RATELIMIT_PREFLIGHT_IMAGE", "ratelimit-systemd:debian12")
# Lets parallel runs on one Docker engine use names of their own.
CONTAINER_PREFIX = os.environ.get("RATELIMIT_TEST_CONTAINER_PREFIX", "ratelimit-test")
# ansible-playbook of the virtualenv that runs the tests (requirements-dev.txt).
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))

pytestmark = pytest.mark.skipif(
    shutil.which("docker") is None, reason="docker CLI not found"
)


@pytest.fixture(scope="module")
def host() -> Iterator[str]:
    """Start an idle container from the test-host image and remove it afterwards."""
    name = f"{CONTAINER_PREFIX}-preflight-{uuid.uuid4().hex[:8]}"
    found = subprocess.run(
        ["docker", "image", "inspect", IMAGE], capture_output=True, check=False
    )
    if found.returncode != 0:
        pytest.fail(f"Image {IMAGE} not found; build it with molecule/images/build.sh")
    subprocess.run(
        ["docker", "run", "--detach", "--name", name, IMAGE, "sleep", "infinity"],
        capture_output=True,
        check=True,
    )
    yield name
    subprocess.run(["docker", "rm", "--force", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def inventory(host: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write an inventory that puts the container in every group."""
    path = tmp_path_factory.mktemp("inventory") / "hosts.yml"
    member = {"hosts": {host: None}}
    content = {
        "redis": member,
        "servers": member,
        "clients": member,
        "all": {
            "vars": {
                "ansible_connection": "community.docker.docker",
                "vault_redis_requirepass": "preflight-test-password",
            }
        },
    }
    path.write_text(json.dumps(content))
    return path


@pytest.fixture(scope="module")
def split_inventory(host: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write an inventory with the container as Redis host and server only.

    The client host does not exist: the preflight play must stop the whole
    run before any play connects to a host.
    """
    path = tmp_path_factory.mktemp("split-inventory") / "hosts.yml"
    content = {
        "redis": {"hosts": {host: None}},
        "servers": {"hosts": {host: None}},
        "clients": {"hosts": {f"{host}-absent-client": None}},
        "all": {
            "vars": {
                "ansible_connection": "community.docker.docker",
                "vault_redis_requirepass": "preflight-test-password",
            }
        },
    }
    path.write_text(json.dumps(content))
    return path


def run_site(
    inventory: Path, extra_vars: dict[str, object], *tags: str
) -> subprocess.CompletedProcess[str]:
    """Run site.yml from the repository root with JSON-typed extra variables."""
    command = [ANSIBLE_PLAYBOOK, "--inventory", str(inventory), "site.yml"]
    command += ["--extra-vars", json.dumps(extra_vars)]
    for tag in tags:
        command += ["--tags", tag]
    environment = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        # One JSON line per result keeps each message on one line.
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_NOCOLOR": "1",
    }
    return subprocess.run(
        command,
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def changed_files(host: str) -> str:
    """Return `docker diff` of the container, the files changed since it started."""
    result = subprocess.run(
        ["docker", "diff", host], capture_output=True, text=True, check=True
    )
    return result.stdout


BAD_INPUTS = [
    (
        {"server_rate_limit": "5/10min"},
        "Invalid server_rate_limit '5/10min'",
    ),
    (
        {"server_rate_limit": "5 10minute"},
        "Invalid server_rate_limit '5 10minute'",
    ),
    (
        {"client_total_requests": -1},
        "Invalid client_total_requests '-1'",
    ),
    (
        {"client_total_failure_retries": "four"},
        "Invalid client_total_failure_retries 'four'",
    ),
    (
        {"client_backoff_factor": "abc"},
        "Invalid client_backoff_factor 'abc'",
    ),
    (
        {"client_total_requests": 0},
        "Invalid client_total_requests '0': expected a whole number from 1 to 1000000",
    ),
    (
        {"client_backoff_factor": 5000},
        "Invalid client_backoff_factor '5000'",
    ),
    (
        {"server_gunicorn_workers": 65},
        "Invalid server_gunicorn_workers '65': expected a whole number from 1 to 64",
    ),
    (
        {"server_gunicorn_worker_class": "eventlet"},
        "Invalid server_gunicorn_worker_class 'eventlet': expected gevent, gthread",
    ),
    (
        {"server_gunicorn_reuse_port": "sometimes"},
        "Invalid server_gunicorn_reuse_port 'sometimes': expected auto, true or",
    ),
    (
        {"server_extra_environment": {"GUNICORN_REUSE_PORT": "sometimes"}},
        "Invalid server_extra_environment: it sets GUNICORN_REUSE_PORT, which the",
    ),
    (
        {"server_extra_environment": "GUNICORN_BIND=1.2.3.4:80"},
        "Invalid server_extra_environment: expected a mapping of variable names",
    ),
    (
        {"server_bind_address": ""},
        "Invalid server_bind_address '': expected an IP address or host name",
    ),
    (
        {"client_extra_environment": {"CLIENT_BACKOFF_FACTOR": "fast"}},
        "Invalid client_extra_environment: it sets CLIENT_BACKOFF_FACTOR, which the",
    ),
    (
        {"server_log_level": "LOUD"},
        "Invalid server_log_level 'LOUD': expected DEBUG, INFO, WARNING, ERROR or",
    ),
    (
        {"vault_redis_requirepass": ""},
        "redis_requirepass is empty, missing, or contains whitespace",
    ),
    (
        {"vault_redis_requirepass": 'pass"word'},
        "redis_requirepass is empty, missing, or contains whitespace, a quote",
    ),
]


@pytest.mark.parametrize(
    ("extra_vars", "message"), BAD_INPUTS, ids=[next(iter(v)) for v, _ in BAD_INPUTS]
)
def test_bad_input_stops_before_changes(
    host: str, inventory: Path, extra_vars: dict[str, object], message: str
) -> None:
    result = run_site(inventory, extra_vars)

    assert result.returncode != 0, result.stdout
    assert message in result.stdout, result.stdout
    assert "TASK [Gathering Facts]" not in result.stdout
    assert f"{host}" in result.stdout
    assert "changed=0" in result.stdout
    assert changed_files(host) == ""


def test_bad_client_input_stops_other_hosts(host: str, split_inventory: Path) -> None:
    result = run_site(split_inventory, {"client_backoff_factor": "abc"})

    assert result.returncode != 0, result.stdout
    assert "Invalid client_backoff_factor 'abc'" in result.stdout, result.stdout
    assert "TASK [Gathering Facts]" not in result.stdout
    assert changed_files(host) == ""


GOOD_LIMITS = [
    "5/10minute",
    "100 per day",
    "2/seconds",
    "10/hour;1000/day",
    "1 per 2 months,5/year|3/minute",
]


@pytest.mark.parametrize("limit", GOOD_LIMITS)
def test_valid_rate_limit_passes_preflight(
    host: str, inventory: Path, limit: str
) -> None:
    result = run_site(inventory, {"server_rate_limit": limit}, "preflight")

    assert result.returncode == 0, result.stdout
    assert "failed=0" in result.stdout
    assert "changed=0" in result.stdout
    # Fact gathering runs with every tag and leaves Ansible's remote temporary
    # directory behind. Nothing else may change.
    ansible_temp = {"C /root", "A /root/.ansible", "A /root/.ansible/tmp"}
    assert set(changed_files(host).splitlines()) <= ansible_temp
