"""The real service for the client's end-to-end tests.

redis-server and gunicorn start through bench/processes.py, the helpers that
the benchmark and the load tests use too. This module adds what the client
tests ask of a running service.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.processes import GunicornServer, RedisServer

# An opener without proxies, so requests to loopback never go to a proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

__all__ = ["RedisServer", "Service", "start_service"]


@dataclass
class Service:
    """gunicorn serving server_app on a loopback port."""

    server: GunicornServer

    @property
    def url(self) -> str:
        return f"{self.server.base_url}/"

    def stop(self) -> None:
        self.server.stop()

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
    """Start gunicorn with server_app, 2 workers, on redis_url.

    Extra keyword arguments are added to the service's environment.
    """
    name = f"server_app-{len(list(directory.glob('server_app-*')))}"
    server = GunicornServer(
        directory / name,
        {
            "GUNICORN_WORKERS": "2",
            "RATE_LIMIT": rate_limit,
            "REDIS_URL": redis_url,
            **settings,
        },
        name=name,
    )
    server.start()
    return Service(server)
