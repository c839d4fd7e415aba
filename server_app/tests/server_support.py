"""Helpers that run the server as deployed: a real redis-server and gunicorn.

Both listen on free loopback ports chosen at run time, write their files to
the test's temporary directory, and are stopped by PID.
"""

# TODO: start these processes through bench/processes.py, as the client, load
# and fault tests do. This older copy remains until the server tests move to
# that API, which has a url() method and no restart() or start counter.

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

REDIS_SERVER = "/usr/bin/redis-server"
GUNICORN = [sys.executable, "-m", "gunicorn"]
START_TIMEOUT = 20.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    """Call ``predicate`` every 0.1 s until it returns true, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s: {message}")


@dataclass
class Response:
    """An HTTP response with its body decoded."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def request(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    source: str = "127.0.0.1",
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Send one request on a new connection from the ``source`` address."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request(method, path, headers=dict(headers or {}))
        raw = connection.getresponse()
        return Response(raw.status, raw.headers, raw.read())
    finally:
        connection.close()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Return every sample of ``/metrics`` keyed by name and label set."""
    response = request(port, "/metrics")
    assert response.status == 200, response.body
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
    name: str,
    **labels: str,
) -> float:
    """Return one sample's value, or 0.0 when the series does not exist."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class RedisServer:
    """A redis-server without persistence on a fixed loopback port."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self._answers_ping, START_TIMEOUT, "redis-server answers PING")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=10)
        self.process = None

    def _answers_ping(self) -> bool:
        with self.client() as client:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False


@dataclass
class Gunicorn:
    """gunicorn serving ``server_app.wsgi:app`` with the packaged config."""

    directory: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.directory / f"gunicorn-{self.port}.log"

    def log(self) -> str:
        return self.log_path.read_text()

    def start(self) -> None:
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.directory / "metrics")
        env.update(self.env)
        env["GUNICORN_BIND"] = f"127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *GUNICORN,
                    "-c",
                    "python:server_app.gunicorn_conf",
                    "server_app.wsgi:app",
                ],
                cwd=self.directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        wait_until(self._serves, START_TIMEOUT, f"gunicorn serves on {self.port}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _serves(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(
                f"gunicorn exited with {self.process.returncode}:\n{self.log()}"
            )
        try:
            return request(self.port, "/healthz").status in (200, 503)
        except OSError:
            return False
