"""Build the Flask-Limiter extension that keys each limit on the client address."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, cast
from wsgiref.types import WSGIEnvironment

import flask
from flask.globals import request_ctx
from flask_limiter import HeaderNames, Limiter, RateLimitExceeded, RequestLimit
from flask_limiter._extension import LimiterContext
from limits.storage import RedisStorage

from server_app.config import AppSettings
from server_app.strategies import StorageHealth, create_strategy

if TYPE_CHECKING:
    from flask.ctx import RequestContext

    # flask-limiter 4 does not export the type of its resolved limits.
    from flask_limiter._limits import RuntimeLimit

    # A limit of ``/``, its request arguments and its key for one client.
    _IndexKey = tuple[RuntimeLimit, tuple[str, ...], str]


# flask-limiter's after_request hook that adds the rate limit headers.
_FLASK_LIMITER_HEADER_HOOK = Limiter._Limiter__inject_headers  # type: ignore[attr-defined]

# The attribute of Flask's request context that stores the limiter's state.
_CONTEXT_ATTRIBUTE = "server_limiter_context"

# The environ key of the values that werkzeug's ProxyFix replaced (werkzeug 3.1).
PROXY_FIX_ORIGINAL = "werkzeug.proxy_fix.orig"


def client_address() -> str:
    """Return the client address the limit and the metrics are keyed on.

    This is the socket peer, or the address ProxyFix took from
    X-Forwarded-For when TRUSTED_PROXY_COUNT is above 0. A forwarded value
    that is not an IP address is replaced by the proxy's own address, so a
    client cannot choose arbitrary keys and metric labels.
    """
    return client_address_in(flask.request.environ)


def client_address_in(environ: WSGIEnvironment) -> str:
    """Return :func:`client_address` for the request of ``environ``."""
    # NOTE: gunicorn bound to a unix socket passes no peer address, so all
    # clients share the key "unknown" unless a trusted proxy sets one.
    address = environ.get("REMOTE_ADDR") or "unknown"
    original = environ.get(PROXY_FIX_ORIGINAL)
    if original is not None and not _is_ip_address(address):
        return str(original.get("REMOTE_ADDR") or "unknown")
    return address


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# The cache of the keys of ``/`` starts over empty when it has this many
# address and method pairs.
_MAX_CACHED_KEYS = 10_000


class _IndexRequestLimit(RequestLimit):
    """A RequestLimit of ``/`` whose key was built before the request.

    flask-limiter's RequestLimit builds its key and a weak proxy of the
    limiter on every request. This class takes both ready-made and sets the
    same attributes.
    """

    def __init__(
        self,
        extension: weakref.ProxyType[Limiter],
        limit: RuntimeLimit,
        request_args: list[str],
        key: str,
    ) -> None:
        self.extension = extension
        self.limit = limit.limit
        self.request_args = request_args
        self.key = key
        self.breached = False
        self.shared = limit.shared
        self._window = None


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
        self._index_limits: list[RuntimeLimit] = []
        # The limits of ``/`` with their request arguments and keys, by client
        # address and method.
        self._index_keys: dict[tuple[str, str], list[_IndexKey]] = {}
        self._proxy = weakref.proxy(self)
        self._fallback_lock = threading.Lock()

    def init_app(self, app: flask.Flask) -> None:
        super().init_app(app)
        # flask-limiter builds its strategy from the name alone, so the
        # one-round-trip strategy replaces it here on the same storage.
        storage = self.storage
        if not isinstance(storage, RedisStorage):
            raise TypeError(f"expected a Redis storage, got {type(storage).__name__}")
        self._one_trip = create_strategy(
            self.settings.rate_limit_strategy, storage, self.health
        )
        self._limiter = self._one_trip
        mapping = self._header_mapping
        self._limit_header = mapping[HeaderNames.LIMIT]
        self._remaining_header = mapping[HeaderNames.REMAINING]
        self._reset_header = mapping[HeaderNames.RESET]
        self._retry_after_header = mapping[HeaderNames.RETRY_AFTER]
        # RATE_LIMIT is read once at start, so its limits are resolved once,
        # in the order flask-limiter checks them.
        self._index_limits = sorted(
            self.limit_manager.default_limits, key=lambda limit: limit.limit
        )
        self._index_keys = {}
        self._replace_header_hook(app)

    @property
    def context(self) -> LimiterContext:
        """Return the limiter's state for the current request.

        flask-limiter keeps it in a defaultdict keyed by limiter, which it adds
        to the request context on first use. This limiter keeps it in an
        attribute of its own on the request context, which is cheaper to look
        up. A copy of the context, as copy_current_request_context makes,
        gets state of its own, as with flask-limiter.
        """
        return _limiter_context(request_ctx._get_current_object())  # type: ignore[attr-defined]

    def _replace_header_hook(self, app: flask.Flask) -> None:
        """Put :meth:`_add_headers` in place of flask-limiter's header hook."""
        hooks = app.after_request_funcs[None]
        for index, hook in enumerate(hooks):
            if getattr(hook, "func", None) is _FLASK_LIMITER_HEADER_HOOK:
                self._flask_limiter_headers = hook
                hooks[index] = self._add_headers
                return
        raise TypeError(
            "flask-limiter registered no Limiter.__inject_headers hook: use the "
            "flask-limiter version pinned in server_app/requirements.txt"
        )

    def _add_headers(self, response: flask.Response) -> flask.Response:
        """Add the rate limit headers to the response of a checked request.

        For ``/`` checked while Redis is in use, the window statistics came
        with the script's reply, so the headers are set from them directly,
        with the same names and values as flask-limiter's. Every other
        response goes through flask-limiter's own hook.
        """
        context = self.context
        limit = context.view_rate_limit
        window = getattr(limit, "_window", None)
        headers = response.headers
        if (
            limit is None
            or window is None
            or context.conditional_deductions
            or self._retry_after_header in headers
        ):
            return cast(flask.Response, self._flask_limiter_headers(response))
        reset_at = int(window.reset_time + 1)
        headers.add(self._limit_header, str(limit.limit.amount))
        headers.add(self._remaining_header, str(window.remaining))
        headers.add(self._reset_header, str(reset_at))
        # The condition above found no Retry-After, so add() need not search.
        headers.add(self._retry_after_header, str(int(reset_at - time.time())))
        return response

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        """Check the limits of ``/`` directly and leave other cases to flask-limiter.

        For every request flask-limiter resolves the limits of the endpoint
        anew: exemptions, blueprints, decorators, meta limits and the
        fallback. Only ``/`` has limits here, always the RATE_LIMIT defaults,
        so the check of ``/`` hits them directly while Redis is in use. The
        fallback storage, exempt endpoints and unknown paths still take
        flask-limiter's own path.
        """
        # NOTE: this overrides private parts of flask-limiter 4.1 (this method,
        # context, LimiterContext, _storage_dead, _key_prefix,
        # RequestLimit._window and the header hook), so check them on every
        # upgrade.
        request_context = request_ctx._get_current_object()  # type: ignore[attr-defined]
        if (
            not in_middleware
            or self._storage_dead
            or not self.enabled
            or request_context.request.endpoint != "index"
        ):
            super()._check_request_limit(callable_name, in_middleware)
            return
        try:
            self._hit_index_limits(request_context)
        except RateLimitExceeded:
            raise
        except Exception:
            if not self._in_memory_fallback_enabled:
                raise
            # The same switch to the fallback as flask-limiter's own check,
            # logged by only one of the threads that fail at the same time.
            with self._fallback_lock:
                first_failure = not self._storage_dead
                self._storage_dead = True
            if first_failure:
                self.logger.warning(
                    "Rate limit storage unreachable - falling back to in-memory storage"
                )
            self.context.seen_limits.clear()
            super()._check_request_limit(callable_name, in_middleware)

    def _hit_index_limits(self, request_context: RequestContext) -> None:
        """Hit each RATE_LIMIT item for the client and raise on the first breach.

        The keys, the header limit and the exception are the ones
        flask-limiter's own check produces for a default limit that has no
        scope, cost or condition.
        """
        request = request_context.request
        context = _limiter_context(request_context)
        context.seen_limits.update(self._index_limits)
        strategy = self._one_trip
        view_limits: list[RequestLimit] = []
        keys = self._keys_of_index(client_address_in(request.environ), request.method)
        for limit, args, key in keys:
            request_limit = _IndexRequestLimit(self._proxy, limit, list(args), key)
            view_limits.append(request_limit)
            admitted = strategy.hit_key(limit.limit, key, cost=limit.deduction_amount)
            # The window statistics are known from the hit, so the header hook
            # reads them without another lookup.
            request_limit._window = strategy.last_window(key)
            if not admitted:
                request_limit.breached = True
                context.view_rate_limit = request_limit
                context.view_rate_limits = view_limits
                raise RateLimitExceeded(limit)
        context.view_rate_limit = view_limits[0] if view_limits else None
        context.view_rate_limits = view_limits

    def _keys_of_index(self, address: str, method: str) -> list[_IndexKey]:
        """Return each limit of ``/`` with the request arguments and the key
        flask-limiter gives it for ``address`` and ``method``.

        Building the keys took about 1 us per limit here, so they are kept
        for up to 10,000 address and method pairs, after which the cache
        starts over empty. The cached arguments are a tuple, so no request
        can change them for the next one.
        """
        keys = self._index_keys.get((address, method))
        if keys is not None:
            return keys
        keys = []
        for limit in self._index_limits:
            args: tuple[str, ...] = (address, limit.scope_for("index", method))
            if self._key_prefix:
                args = (self._key_prefix, *args)
            keys.append((limit, args, limit.limit.key_for(*args)))
        if len(self._index_keys) >= _MAX_CACHED_KEYS:
            self._index_keys.clear()
        self._index_keys[(address, method)] = keys
        return keys

    def storage_is_reachable(self) -> bool:
        """Return whether Redis replies to PING within the timeout."""
        reachable = bool(self.storage.check())
        if reachable:
            self.health.record_success()
        return reachable


def _limiter_context(request_context: RequestContext) -> LimiterContext:
    """Return the limiter's state in ``request_context``, added on first use."""
    context: LimiterContext | None = getattr(request_context, _CONTEXT_ATTRIBUTE, None)
    if context is None:
        context = LimiterContext()
        setattr(request_context, _CONTEXT_ATTRIBUTE, context)
    return context


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
