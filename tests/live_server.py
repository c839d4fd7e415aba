"""Helpers shared by the load, fault and bad-input tests of our server."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from bench.processes import GunicornServer

# The type of the start_server fixture: settings in, a running server out.
StartServer = Callable[..., GunicornServer]


def client_request_counts(base_url: str) -> dict[tuple[str, str], float]:
    """Return client_requests_total by (address, status) from base_url/metrics."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "client_requests_total":
                key = (sample.labels["address"], sample.labels["status"])
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts
