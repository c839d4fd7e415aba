"""Build the Flask-Limiter extension that keys each limit on the client address."""

from __future__ import annotations

import logging
from typing import cast

import flask
from flask_limiter import Limiter
from limits.storage import RedisStorage

from server_app.config import AppSettings
from server_app.strategies import StorageHealth, create_strategy


def client_address() -> str:
    """Return the client address the limit and the metrics are keyed on.

    This is the socket peer, or the address ProxyFix took from
    X-Forwarded-For when TRUSTED_PROXY_COUNT is above 0.
    """
    # NOTE: gunicorn bound to a unix socket passes no peer address, so all
    # clients share the key "unknown" unless a trusted proxy sets one.
    return flask.request.remote_addr or "unknown"


class ServerLimiter(Limiter):
    """A Limiter whose Redis strategy uses one round trip per request."""

    def __init__(self, settings: AppSettings) -> None:
        super().__init__(
            key_func=client_address,
            default_limits=[settings.rate_limit],
            headers_enabled=True,
            strategy=settings.rate_limit_strategy,
            storage_uri=settings.redis_url,
            # redis.Redis takes the timeouts as float seconds, although
            # flask-limiter annotates the options as str or int.
            storage_options=cast(
                dict[str, str | int],
                {
                    "socket_timeout": settings.redis_timeout,
                    "socket_connect_timeout": settings.redis_timeout,
                },
            ),
            in_memory_fallback_enabled=settings.on_storage_error == "fallback",
        )
        self.settings = settings
        self.health = StorageHealth(settings.redis_url_for_logs)

    def init_app(self, app: flask.Flask) -> None:
        super().init_app(app)
        # flask-limiter builds its strategy from the name alone, so the
        # one-round-trip strategy replaces it here on the same storage.
        storage = self.storage
        if not isinstance(storage, RedisStorage):
            raise TypeError(f"expected a Redis storage, got {type(storage).__name__}")
        self._limiter = create_strategy(
            self.settings.rate_limit_strategy, storage, self.health
        )

    def storage_is_reachable(self) -> bool:
        """Return whether Redis replies to PING within the timeout."""
        reachable = bool(self.storage.check())
        if reachable:
            self.health.record_success()
        return reachable


def create_limiter(app: flask.Flask, settings: AppSettings) -> ServerLimiter:
    """Create the limiter for ``settings`` and register it on ``app``."""
    limiter = ServerLimiter(settings)
    limiter.init_app(app)
    # flask-limiter logs every rejected request at INFO. The 429s are counted
    # in the metrics instead, so its logger only passes warnings and errors.
    logging.getLogger("flask-limiter").setLevel(
        max(logging.WARNING, logging.getLevelName(settings.log_level))
    )
    return limiter
