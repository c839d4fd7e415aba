"""Prometheus metrics: Flask's request totals and the per-client counter."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import flask
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from server_app.limiter import client_address_in
from server_app.process_id import current_process_id

# The environ key of the time when a request reached the application.
START_TIME_KEY = "server_app.request_start"

# Only these statuses are counted per client address: an unbounded set of
# addresses times every status would grow the metrics without need.
CLIENT_STATUSES = frozenset({200, 429})


def read_process_id_once() -> None:
    """Make the multiprocess metric values ask the kernel for the process ID
    once per process, not on every update.

    prometheus_client compares the process ID before each update, to start
    new files after a fork, and os.getpid() is a system call each time: 4 of
    them per request here. Call this before the process creates any metric:
    a metric value created before the call keeps a second handle on the same
    file. It does nothing without PROMETHEUS_MULTIPROC_DIR, or when called
    again.
    """
    value_class = values.ValueClass
    if not getattr(value_class, "_multiprocess", False):
        return
    if getattr(value_class, "reads_process_id_once", False):
        return
    value_class = values.MultiProcessValue(  # type: ignore[no-untyped-call]
        process_identifier=current_process_id
    )
    value_class.reads_process_id_once = True
    values.ValueClass = value_class


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

    def count(self, request: flask.Request, status: int) -> None:
        """Count a response of ``/`` to ``request`` if its status is 200 or 429."""
        if status not in CLIENT_STATUSES or request.endpoint != "index":
            return
        label = (client_address_in(request.environ), status)
        child = self._children.get(label)
        if child is None:
            child = self.counter.labels(label[0], str(status))
            self._children[label] = child
        child.inc()


class StartTimer:
    """WSGI middleware that records in the environ when a request arrived."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        environ[START_TIME_KEY] = time.perf_counter()
        return self.app(environ, start_response)


class RequestMetrics:
    """The request metrics that prometheus-flask-exporter exports by default.

    The exporter's own hooks build the label dictionaries and look up each
    labelled child, which takes a lock, on every request. One after_request
    hook here records the same metric names and the per-client counter, but
    looks up each child once per label set. The duration histogram is
    labelled by endpoint, not by path (see :func:`create_metrics`). The start
    time comes from :class:`StartTimer`, which costs less than a
    before_request hook that stores it in ``flask.g``.
    """

    def __init__(
        self, registry: CollectorRegistry, clients: ClientRequestCounter
    ) -> None:
        self.clients = clients
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
        app.wsgi_app = StartTimer(app.wsgi_app)  # type: ignore[method-assign]
        app.after_request(self.observe)
        app.teardown_request(self.count_exception)

    def observe(self, response: flask.Response) -> flask.Response:
        """Count ``response`` and observe the duration of its request."""
        request = flask.request._get_current_object()  # type: ignore[attr-defined]
        if hasattr(request, "prom_do_not_track"):
            return response
        method = request.method
        status = response.status_code
        endpoint = request.endpoint
        total_label = (method, status)
        total = self._total_children.get(total_label)
        if total is None:
            total = self.total.labels(method, str(status))
            self._total_children[total_label] = total
        # The endpoint label is "None" for unknown paths, as in the exporter.
        duration_label = (method, str(endpoint), status)
        duration = self._duration_children.get(duration_label)
        if duration is None:
            duration = self.duration.labels(*duration_label[:2], str(status))
            self._duration_children[duration_label] = duration
        start = request.environ.get(START_TIME_KEY)
        if start is not None:
            duration.observe(max(time.perf_counter() - start, 0.0))
        total.inc()
        self.clients.count(request, status)
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
    clients = ClientRequestCounter(metrics.registry)
    RequestMetrics(metrics.registry, clients).init_app(app)
    return metrics
