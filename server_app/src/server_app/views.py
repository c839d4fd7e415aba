"""The HTTP endpoints and the JSON error responses."""

from __future__ import annotations

import functools
import json
import logging

import flask
from flask_limiter import RateLimitExceeded
from prometheus_flask_exporter import PrometheusMetrics
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException, InternalServerError

from server_app.limiter import ServerLimiter

logger = logging.getLogger(__name__)

# The bodies are serialised once: jsonify costs more than the rest of the view.
HELLO_BODY = json.dumps({"message": "hello world!"}, separators=(",", ":")) + "\n"


def register_views(
    app: flask.Flask, limiter: ServerLimiter, metrics: PrometheusMetrics
) -> None:
    """Add ``/`` and ``/healthz`` and the JSON error handlers to ``app``."""

    @app.get("/")
    def index() -> flask.Response:
        return flask.Response(HELLO_BODY, mimetype="application/json")

    @app.get("/healthz")
    @limiter.exempt
    @metrics.do_not_track()  # type: ignore[untyped-decorator]
    def healthz() -> tuple[flask.Response, int]:
        if limiter.storage_is_reachable():
            return flask.jsonify(status="ok", storage="reachable"), 200
        return flask.jsonify(status="unavailable", storage="unreachable"), 503

    # The exporter registers /metrics under this endpoint name.
    limiter.exempt(app.view_functions["prometheus_metrics"])
    app.register_error_handler(RateLimitExceeded, rate_limit_exceeded)
    app.register_error_handler(RedisError, storage_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(InternalServerError, internal_error)


def rate_limit_exceeded(error: RateLimitExceeded) -> flask.Response:
    """Return 429 naming the limit that was hit. flask-limiter adds the headers."""
    body = _rate_limit_body(str(error.limit.limit))
    return flask.Response(body, status=429, mimetype="application/json")


@functools.cache
def _rate_limit_body(limit: str) -> str:
    body = {"error": "rate limit exceeded", "limit": limit}
    return json.dumps(body, separators=(",", ":")) + "\n"


def storage_error(error: RedisError) -> tuple[flask.Response, int]:
    """Return 503 when Redis fails and RATE_LIMIT_ON_STORAGE_ERROR is reject."""
    # The strategy has logged the start of the outage once, so the handler
    # does not log each rejected request.
    body = {"error": "rate limit storage unavailable"}
    return flask.jsonify(body), 503


def http_error(error: HTTPException) -> tuple[flask.Response, int]:
    """Return any other HTTP error, such as 404 or 405, as JSON."""
    code = error.code or 500
    response = error.get_response()
    body = flask.jsonify(error=error.name, status=code)
    for name in ("Allow", "Retry-After"):
        if name in response.headers:
            body.headers[name] = response.headers[name]
    return body, code


def internal_error(error: InternalServerError) -> tuple[flask.Response, int]:
    """Log an unhandled exception and return 500 as JSON without a traceback."""
    logger.error(
        "Unhandled exception on %s %s",
        flask.request.method,
        flask.request.path,
        exc_info=error.original_exception,
    )
    return flask.jsonify(error="Internal Server Error", status=500), 500
