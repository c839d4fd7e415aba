"""Helpers for the server tests: requests, metrics and the processes.

redis-server and gunicorn run through bench.processes, as in the client, load
and fault tests: on free loopback ports, with their files in the test's
temporary directory, and stopped by PID.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench import processes
from bench.processes import GunicornServer, RedisServer, free_port

__all__ = [
    "Gunicorn",
    "RedisServer",
    "Response",
    "free_port",
    "request",
    "run_gunicorn",
    "sample",
    "scrape",
    "wait_until",
]

START_TIMEOUT = 20.0


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


class Gunicorn(GunicornServer):
    """gunicorn serving ``server_app.wsgi:app`` with the packaged config."""

    def __init__(self, directory: Path, settings: Mapping[str, str]) -> None:
        super().__init__(directory, settings, name="gunicorn")

    def log(self) -> str:
        return self.process.output()

    def start(self) -> None:
        """Start gunicorn and wait until a worker responds to ``/healthz``."""
        super().start()
        wait_until(self._serves, START_TIMEOUT, f"gunicorn serves on {self.port}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def _serves(self) -> bool:
        if not self.process.running():
            pytest.fail(f"gunicorn exited:\n{self.log()}")
        try:
            return request(self.port, "/healthz").status in (200, 503)
        except OSError:
            return False


def run_gunicorn(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run gunicorn with the packaged config in ``tmp_path`` until it exits,
    with ``env`` added to its settings (see bench.processes.run_gunicorn)."""
    return processes.run_gunicorn(tmp_path, env)
