"""The application factory."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import flask
from werkzeug.middleware.proxy_fix import ProxyFix

from server_app.config import AppSettings
from server_app.limiter import create_limiter
from server_app.metrics import create_metrics
from server_app.views import register_views

LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def create_app(config: Mapping[str, Any] | None = None) -> flask.Flask:
    """Create the application from the environment and ``config``.

    ``config`` overrides the environment: its keys are the environment
    variable names, such as ``RATE_LIMIT``. Raises :class:`ConfigError` when
    a setting is invalid.
    """
    environ: dict[str, str] = dict(os.environ)
    if config:
        environ.update({name: str(value) for name, value in config.items()})
    settings = AppSettings.from_env(environ)
    configure_logging(settings.log_level)

    app = flask.Flask(__name__)
    app.config["SETTINGS"] = settings
    if settings.trusted_proxy_count:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxy_count
        )

    # The metrics go first, so Flask runs their after_request hook last, on
    # the response as sent.
    metrics = create_metrics(app)
    limiter = create_limiter(app, settings)
    register_views(app, limiter, metrics)
    logging.getLogger(__name__).info(
        "Serving with RATE_LIMIT=%s, RATE_LIMIT_STRATEGY=%s, REDIS_URL=%s, "
        "RATE_LIMIT_ON_STORAGE_ERROR=%s, TRUSTED_PROXY_COUNT=%d",
        settings.rate_limit,
        settings.rate_limit_strategy,
        settings.redis_url_for_logs,
        settings.on_storage_error,
        settings.trusted_proxy_count,
    )
    return app


def configure_logging(level: str) -> None:
    """Send the service's logs to stderr unless logging is already set up."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("server_app").setLevel(level)
