"""Fixtures that build the images once per session and run compose stacks.

The tests need a running Docker engine and either `docker compose` or
`docker-compose`. No image registry is reachable where they run, so every
image builds from a local base: the debian12 image that
molecule/images/build.sh makes with debootstrap, unless
CONTAINER_TEST_BASE_IMAGE names another one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_SECONDS = 900
COMMAND_TIMEOUT_SECONDS = 180
CLIENT_EXIT_TIMEOUT_SECONDS = 120

# Every image, container and network the tests create starts with this prefix.
NAME_PREFIX = "rd-"
SERVER_IMAGE = "rd-server:test"
CLIENT_IMAGE = "rd-client:test"
REDIS_IMAGE = "rd-redis:test"
DEFAULT_BASE_IMAGE = "ratelimit-systemd:debian12"
# The label of the builder stages in both Dockerfiles.
BUILDER_STAGE_LABEL = "ratelimit.stage=builder"


def run_command(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` from the repository root and capture its text output."""
    result = subprocess.run(
        list(args),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} failed with exit status {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def compose_command() -> list[str]:
    """Return the compose CLI: the v2 plugin if present, else docker-compose."""
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, check=False
    )
    if probe.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "Neither `docker compose` nor `docker-compose` was found: install the "
        "compose plugin or Debian's docker-compose package."
    )


@dataclass(frozen=True)
class Images:
    """Tags of the images built for this test session."""

    server: str
    client: str
    redis: str
    base: str


def build_image(tag: str, context: str, base_image: str) -> None:
    """Build ``context`` into ``tag`` with the legacy builder from ``base_image``.

    Debian 12's docker.io ships no buildx plugin, and the CLI then falls back
    to the legacy builder with a warning. DOCKER_BUILDKIT=0 makes that choice
    explicit, so builds behave the same with or without the plugin.
    """
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    run_command(
        [
            "docker",
            "build",
            "--quiet",
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "--tag",
            tag,
            context,
        ],
        env=env,
        timeout=BUILD_TIMEOUT_SECONDS,
    )


@pytest.fixture(scope="session")
def images() -> Iterator[Images]:
    """Build the server, client and Redis images once for the session.

    The images are removed at the end unless KEEP_TEST_IMAGES=1, which keeps
    them and their layer cache for the next run.
    """
    if run_command(["docker", "info"], check=False).returncode != 0:
        pytest.fail("The Docker engine does not respond to `docker info`.")
    base = os.environ.get("CONTAINER_TEST_BASE_IMAGE", DEFAULT_BASE_IMAGE)
    if base == DEFAULT_BASE_IMAGE:
        # The script keeps an image that already exists.
        run_command(
            ["molecule/images/build.sh", "debian12"], timeout=BUILD_TIMEOUT_SECONDS
        )
    built = Images(
        server=SERVER_IMAGE, client=CLIENT_IMAGE, redis=REDIS_IMAGE, base=base
    )
    build_image(built.server, "server_app", base)
    build_image(built.client, "client_app", base)
    build_image(built.redis, "tests/containers/redis", base)
    yield built
    if os.environ.get("KEEP_TEST_IMAGES") != "1":
        run_command(
            ["docker", "image", "rm", built.server, built.client, built.redis],
            check=False,
        )
        # The legacy builder leaves each app's builder stage as an untagged
        # image of about 240 MB. The Dockerfiles label those stages.
        run_command(
            [
                "docker",
                "image",
                "prune",
                "--force",
                "--filter",
                f"label={BUILDER_STAGE_LABEL}",
            ],
            check=False,
        )


@dataclass
class ComposeStack:
    """A running docker-compose.yml project with test-specific settings."""

    project: str
    command: list[str]
    env: dict[str, str]

    def compose(
        self, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a compose subcommand for this project."""
        return run_command(
            [*self.command, "--project-name", self.project, *args],
            env=self.env,
            check=check,
        )

    def container_ids(self, service: str) -> list[str]:
        """Return the ids of every container of ``service``, running or exited."""
        result = run_command(
            [
                "docker",
                "ps",
                "--all",
                "--quiet",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--filter",
                f"label=com.docker.compose.service={service}",
            ]
        )
        return result.stdout.split()

    def inspect(self, container_id: str) -> dict[str, Any]:
        """Return `docker inspect` of one container."""
        result = run_command(["docker", "inspect", container_id])
        inspected: list[dict[str, Any]] = json.loads(result.stdout)
        return inspected[0]

    def wait_for_exit(self, service: str) -> dict[str, int]:
        """Wait until every container of ``service`` exits and map ids to exit codes."""
        deadline = time.monotonic() + CLIENT_EXIT_TIMEOUT_SECONDS
        while True:
            states = {
                container_id: self.inspect(container_id)["State"]
                for container_id in self.container_ids(service)
            }
            if states and all(state["Status"] == "exited" for state in states.values()):
                return {
                    container_id: state["ExitCode"]
                    for container_id, state in states.items()
                }
            if time.monotonic() > deadline:
                pytest.fail(
                    f"The {service} containers of {self.project} did not exit "
                    f"within {CLIENT_EXIT_TIMEOUT_SECONDS} s: {states}"
                )
            time.sleep(1)


def start_stack(images: Images, *up_args: str) -> ComposeStack:
    """Start docker-compose.yml under a unique project name with test images.

    The backoff factor is 0.01 s, so the four retries take milliseconds. The
    rest of the worked example comes from .env unchanged. The server is
    published on a loopback port that Docker picks.
    """
    env = {
        **os.environ,
        "REDIS_IMAGE": images.redis,
        "SERVER_IMAGE": images.server,
        "CLIENT_IMAGE": images.client,
        "SERVER_PUBLISH": "127.0.0.1:",
        "CLIENT_BACKOFF_FACTOR": "0.01",
    }
    stack = ComposeStack(
        project=f"{NAME_PREFIX}test-{uuid.uuid4().hex[:8]}",
        command=compose_command(),
        env=env,
    )
    result = stack.compose("up", "--detach", "--no-build", *up_args, check=False)
    if result.returncode != 0:
        logs = stack.compose("logs", "--no-color", check=False).stdout
        stop_stack(stack)
        pytest.fail(
            f"compose up failed with exit status {result.returncode}:\n"
            f"{result.stderr}\n{logs}"
        )
    return stack


def stop_stack(stack: ComposeStack) -> None:
    """Remove the project's containers, network and volumes."""
    stack.compose("down", "--volumes", "--remove-orphans", check=False)
