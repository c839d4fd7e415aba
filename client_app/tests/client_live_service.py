"""Start the real service for end-to-end tests: redis-server and gunicorn
serving server_app, each on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REDIS_SERVER = Path("/usr/bin/redis-server")
GUNICORN = Path(sys.executable).parent / "gunicorn"
# Seconds to wait for a process to accept requests before the test fails.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# An opener without proxies, so requests to loopback never go to a proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Variables of the service that the test's own environment must not leak in.
SERVICE_VARIABLES = (
    "RATE_LIMIT",
    "RATE_LIMIT_STRATEGY",
    "REDIS_URL",
    "RATE_LIMIT_ON_STORAGE_ERROR",
    "TRUSTED_PROXY_COUNT",
    "PROMETHEUS_MULTIPROC_DIR",
    "LOG_LEVEL",
)


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_until(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path
) -> None:
    """Poll ready() until it returns True.

    Raises RuntimeError with the process log if the process exits first or
    START_TIMEOUT passes.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with status {process.returncode}:\n"
                + log.read_text()
            )
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"{process.args!r} did not accept requests within {START_TIMEOUT} s:\n"
        + log.read_text()
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process this module started, by its PID, and wait for it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class RedisServer:
    """A redis-server process with no persistence, in its own directory."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis(directory: Path) -> RedisServer:
    port = free_port()
    log = directory / "redis.log"
    command = [
        str(REDIS_SERVER),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    wait_until(lambda: _redis_answers_ping(port), process, log)
    return RedisServer(port, process)


def _redis_answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class Service:
    """gunicorn serving server_app on a loopback port."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> tuple[int, dict[str, str]]:
        """Send GET for path, relative to the service URL, and return the
        status and headers, error statuses included."""
        try:
            with _DIRECT.open(self.url + path, timeout=5) as response:
                return response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Scrape /metrics and return each sample's value by name and labels."""
        # prometheus_client is one of server_app's dependencies. Importing it
        # here lets the other client tests run in a venv without them.
        from prometheus_client.parser import text_string_to_metric_families

        with _DIRECT.open(self.url + "metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                samples[key] = sample.value
        return samples


def start_service(
    directory: Path, redis_url: str, rate_limit: str, **settings: str
) -> Service:
    """Start gunicorn with server_app and wait until /healthz returns 200.

    Extra keyword arguments are added to the service's environment.
    """
    port = free_port()
    metrics_directory = directory / f"metrics-{port}"
    metrics_directory.mkdir()
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in SERVICE_VARIABLES and not name.startswith("GUNICORN_")
    }
    environ.update(
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS="2",
        RATE_LIMIT=rate_limit,
        REDIS_URL=redis_url,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_directory),
    )
    environ.update(settings)
    command = [
        str(GUNICORN),
        "-c",
        "python:server_app.gunicorn_conf",
        "server_app.wsgi:app",
    ]
    log = directory / f"gunicorn-{port}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command, env=environ, stdout=log_file, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    wait_until(lambda: _returns_ok(url + "healthz"), process, log)
    return Service(url, process, log)


def _returns_ok(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
