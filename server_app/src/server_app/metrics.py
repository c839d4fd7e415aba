"""Prometheus metrics: Flask's request totals and the per-client counter."""

from __future__ import annotations

import os
import time

import flask
from prometheus_client import CollectorRegistry, Counter, Histogram
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


class RequestMetrics:
    """The request metrics that prometheus-flask-exporter exports by default.

    The exporter's own hooks build the label dictionaries and look up each
    labelled child, which takes a lock, on every request. These hooks record
    the same metric names, labels and values, but look up each child once per
    label set.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "flask_http_request_duration_seconds",
            "Flask HTTP request duration in seconds",
            ("method", "endpoint", "status"),
            registry=registry,
        )
        self.total = Counter(
            "flask_http_request_total",
            "Total number of HTTP requests",
            ("method", "status"),
            registry=registry,
        )
        self.exceptions = Counter(
            "flask_http_request_exceptions_total",
            "Total number of HTTP requests which resulted in an exception",
            ("method", "status"),
            registry=registry,
        )
        self._duration_children: dict[tuple[str, str, int], Histogram] = {}
        self._total_children: dict[tuple[str, int], Counter] = {}

    def init_app(self, app: flask.Flask) -> None:
        """Register the hooks that time and count the requests of ``app``."""
        app.before_request(self.start_timer)
        app.after_request(self.observe)
        app.teardown_request(self.count_exception)

    def start_timer(self) -> None:
        flask.g.request_start = time.perf_counter()

    def observe(self, response: flask.Response) -> flask.Response:
        """Count ``response`` and observe the duration of its request."""
        request = flask.request
        if hasattr(request, "prom_do_not_track"):
            return response
        method = request.method
        status = response.status_code
        total_label = (method, status)
        total = self._total_children.get(total_label)
        if total is None:
            total = self.total.labels(method, str(status))
            self._total_children[total_label] = total
        # The endpoint label is "None" for unknown paths, as in the exporter.
        duration_label = (method, str(request.endpoint), status)
        duration = self._duration_children.get(duration_label)
        if duration is None:
            duration = self.duration.labels(*duration_label[:2], str(status))
            self._duration_children[duration_label] = duration
        start = flask.g.get("request_start")
        if start is not None:
            duration.observe(max(time.perf_counter() - start, 0.0))
        total.inc()
        return response

    def count_exception(self, error: BaseException | None) -> None:
        """Count a request that raised an exception, as a 500."""
        if error is None or hasattr(flask.request, "prom_do_not_track"):
            return
        self.exceptions.labels(flask.request.method, "500").inc()


def create_metrics(app: flask.Flask) -> PrometheusMetrics:
    """Register ``/metrics`` and the request metrics on ``app``.

    With PROMETHEUS_MULTIPROC_DIR set, every worker writes its values into
    that directory and ``/metrics`` returns the sum of all workers.
    """
    # RequestMetrics replaces the exporter's default request metrics. Its
    # duration histogram is labelled by endpoint name, not by path, so
    # requests for random paths cannot add series. /metrics and /healthz are
    # marked do_not_track, which keeps them out of every request metric.
    options = {"export_defaults": False}
    metrics: PrometheusMetrics
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics = GunicornInternalPrometheusMetrics.for_app_factory(**options)
    else:
        metrics = PrometheusMetrics.for_app_factory(
            registry=CollectorRegistry(), **options
        )
    metrics.init_app(app)
    RequestMetrics(metrics.registry).init_app(app)
    counter = ClientRequestCounter(metrics.registry)
    app.after_request(counter.count)
    return metrics
