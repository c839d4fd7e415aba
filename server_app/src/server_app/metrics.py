"""Prometheus metrics: Flask's request totals and the per-client counter."""

from __future__ import annotations

import os

import flask
from prometheus_client import CollectorRegistry, Counter
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from server_app.limiter import client_address

# Only these statuses are counted per client address: an unbounded set of
# addresses times every status would grow the metrics without need.
CLIENT_STATUSES = frozenset({200, 429})


class ClientRequestCounter:
    """``client_requests_total{address,status}`` for 200 and 429 responses."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "client_requests_total",
            "Requests answered with 200 or 429, by client address and status.",
            ("address", "status"),
            registry=registry,
        )
        # Labelled children, cached because labels() takes a lock and builds
        # the label tuple on every call.
        self._children: dict[tuple[str, int], Counter] = {}

    def count(self, response: flask.Response) -> flask.Response:
        """Count ``response`` if its status is 200 or 429 (an after_request hook)."""
        status = response.status_code
        if status not in CLIENT_STATUSES or flask.request.endpoint != "index":
            return response
        label = (client_address(), status)
        child = self._children.get(label)
        if child is None:
            child = self.counter.labels(label[0], str(status))
            self._children[label] = child
        child.inc()
        return response


def create_metrics(app: flask.Flask) -> PrometheusMetrics:
    """Register ``/metrics`` and the request metrics on ``app``.

    With PROMETHEUS_MULTIPROC_DIR set, every worker writes its values into
    that directory and ``/metrics`` returns the sum of all workers.
    """
    # The duration histogram is labelled by endpoint name, not by path, so
    # requests for random paths cannot add series. /metrics and /healthz are
    # marked do_not_track, which keeps them out of every request metric.
    options = {"group_by": "endpoint"}
    metrics: PrometheusMetrics
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics = GunicornInternalPrometheusMetrics.for_app_factory(**options)
    else:
        metrics = PrometheusMetrics.for_app_factory(
            registry=CollectorRegistry(), **options
        )
    metrics.init_app(app)
    counter = ClientRequestCounter(metrics.registry)
    app.after_request(counter.count)
    return metrics
