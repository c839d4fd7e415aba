"""Settings parsing and the application factory, without gunicorn."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import flask
import pytest
import redis
from flask_limiter import RequestLimit
from server_support import RedisServer

from server_app.app import create_app
from server_app.config import (
    AppSettings,
    ConfigError,
    GunicornSettings,
    default_workers,
    mask_password,
)
from server_app.limiter import _MAX_CACHED_KEYS as MAX_CACHED_KEYS
from server_app.limiter import ServerLimiter


def test_defaults_match_documentation() -> None:
    settings = AppSettings.from_env({})

    assert settings.rate_limit == "5/10minute"
    assert settings.rate_limit_strategy == "fixed-window"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.redis_timeout == 1.0
    assert settings.on_storage_error == "fallback"
    assert settings.trusted_proxy_count == 0
    assert settings.log_level == "INFO"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5/10minute", ["5 per 10 minute"]),
        ("20/2hour", ["20 per 2 hour"]),
        ("10/day", ["10 per 1 day"]),
        ("300/30minute", ["300 per 30 minute"]),
        ("10/day;300/30minute", ["300 per 30 minute", "10 per 1 day"]),
    ],
)
def test_rate_limit_accepts_documented_forms(value: str, expected: list[str]) -> None:
    settings = AppSettings.from_env({"RATE_LIMIT": value})

    assert [str(item) for item in settings.limits] == expected


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://:password@redis.example:6380/2",
        "rediss://user:password@redis.example:6379/0",
        "redis+unix:///run/redis/redis.sock",
    ],
)
def test_redis_url_accepts_documented_forms(url: str) -> None:
    assert AppSettings.from_env({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("1", True), ("off", False)]
)
def test_access_log_accepts_booleans(value: str, expected: bool) -> None:
    settings = GunicornSettings.from_env({"GUNICORN_ACCESS_LOG": value})

    assert settings.access_log is expected


@pytest.mark.parametrize(
    ("value", "worker_class", "bind", "expected"),
    [
        ("auto", "gevent", "0.0.0.0:80", True),
        ("auto", "gthread", "[::]:8080", True),
        ("auto", "sync", "0.0.0.0:80", False),
        ("auto", "sync:4", "0.0.0.0:80", True),
        ("auto", "gevent", "unix:/run/app.sock", False),
        ("AUTO", "gevent", "0.0.0.0:80", True),
        ("true", "sync", "0.0.0.0:80", True),
        ("false", "gevent", "0.0.0.0:80", False),
        ("off", "gevent", "unix:/run/app.sock", False),
    ],
)
def test_reuse_port_follows_worker_class_and_bind(
    value: str, worker_class: str, bind: str, expected: bool
) -> None:
    # A class written CLASS:THREADS runs that many threads, and 1 otherwise.
    name, _, threads = worker_class.partition(":")
    settings = GunicornSettings.from_env(
        {
            "GUNICORN_REUSE_PORT": value,
            "GUNICORN_WORKER_CLASS": name,
            "GUNICORN_THREADS": threads or "1",
            "GUNICORN_BIND": bind,
        }
    )

    assert settings.reuse_port is expected


def test_reuse_port_rejects_unix_socket() -> None:
    with pytest.raises(ConfigError) as raised:
        GunicornSettings.from_env(
            {"GUNICORN_REUSE_PORT": "true", "GUNICORN_BIND": "unix:/run/app.sock"}
        )

    assert str(raised.value) == (
        "invalid GUNICORN_REUSE_PORT='true': expected auto or false with "
        "GUNICORN_BIND='unix:/run/app.sock', a unix socket"
    )


def test_gunicorn_defaults_scale_with_cpus() -> None:
    settings = GunicornSettings.from_env({}, cpu_count=2)

    assert settings.bind == "0.0.0.0:80"
    assert settings.workers == 3
    assert settings.worker_class == "gevent"
    assert settings.threads == 4
    assert settings.access_log is False
    assert settings.reuse_port is True
    assert default_workers(1) == 2
    assert default_workers(64) == 8


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:pw@host/1", "redis://user:***@host/1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_mask_password_hides_only_password(url: str, masked: str) -> None:
    assert mask_password(url) == masked


def test_create_app_rejects_invalid_limit() -> None:
    with pytest.raises(ConfigError, match=r"invalid RATE_LIMIT='5/10min'"):
        create_app({"RATE_LIMIT": "5/10min"})


def test_factory_app_limits_with_redis(redis_server: RedisServer) -> None:
    with redis_server.client() as redis_client:
        redis_client.flushall()
    app = create_app({"RATE_LIMIT": "1/minute", "REDIS_URL": redis_server.url()})
    client = app.test_client()

    first = client.get("/", environ_base={"REMOTE_ADDR": "192.0.2.10"})
    second = client.get("/", environ_base={"REMOTE_ADDR": "192.0.2.10"})
    other = client.get("/", environ_base={"REMOTE_ADDR": "192.0.2.11"})

    assert first.status_code == 200
    assert first.get_json() == {"message": "hello world!"}
    assert second.status_code == 429
    assert other.status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/missing").get_json() == {"error": "Not Found", "status": 404}
    for limiter in app.extensions["limiter"]:
        limiter.storage.get_connection().close()


CreateLimitedApp = Callable[[str], tuple[flask.Flask, ServerLimiter]]


@pytest.fixture
def create_limited_app(redis_server: RedisServer) -> Iterator[CreateLimitedApp]:
    """Return a function that creates an app with a RATE_LIMIT on the
    session's Redis, and close the limiters' connections after the test."""
    limiters: list[ServerLimiter] = []

    def create(rate_limit: str) -> tuple[flask.Flask, ServerLimiter]:
        app = create_app({"RATE_LIMIT": rate_limit, "REDIS_URL": redis_server.url()})
        (limiter,) = app.extensions["limiter"]
        limiters.append(limiter)
        return app, limiter

    yield create
    for limiter in limiters:
        limiter.storage.get_connection().close()


def test_limiter_state_per_request_context(
    create_limited_app: CreateLimitedApp,
) -> None:
    app, limiter = create_limited_app("5/minute")

    with app.test_request_context("/"):
        state = limiter.context
        copied = flask.copy_current_request_context(lambda: limiter.context)()
        same = limiter.context
    with app.test_request_context("/"):
        later = limiter.context

    assert same is state
    assert copied is not state
    assert later is not state


def test_index_limits_match_flask_limiter(
    create_limited_app: CreateLimitedApp, redis_client: redis.Redis
) -> None:
    app, limiter = create_limited_app("2/minute;5/hour")
    address = "2001:db8::7"

    for method, remaining in (("GET", [1, 4]), ("HEAD", [0, 3])):
        with app.test_request_context(
            "/", method=method, environ_base={"REMOTE_ADDR": address}
        ):
            limiter._check_request_limit()
            ours = list(limiter.context.view_rate_limits)

        assert [limit.key for limit in ours] == [
            f"LIMITER/{address}/index/2/1/minute",
            f"LIMITER/{address}/index/5/1/hour",
        ]
        for request_limit in ours:
            reference = RequestLimit(
                limiter,
                request_limit.limit,
                request_limit.request_args,
                False,
                request_limit.shared,
            )
            reference._window = request_limit._window
            assert vars(request_limit).keys() == vars(reference).keys()
            for name, value in vars(reference).items():
                if name != "extension":
                    assert getattr(request_limit, name) == value, name
            assert request_limit.extension == reference.extension
        assert [limit.window.remaining for limit in ours] == remaining


def test_index_key_cache_stays_bounded(create_limited_app: CreateLimitedApp) -> None:
    _, limiter = create_limited_app("2/minute")

    for number in range(MAX_CACHED_KEYS + 5):
        keys = limiter._keys_of_index(f"10.0.{number // 256}.{number % 256}", "GET")

    assert keys[0][2] == "LIMITER/10.0.39.20/index/2/1/minute"
    assert len(limiter._index_keys) == 5


def test_request_args_not_shared(
    create_limited_app: CreateLimitedApp, redis_client: redis.Redis
) -> None:
    app, limiter = create_limited_app("5/minute")
    environ = {"REMOTE_ADDR": "192.0.2.7"}

    with app.test_request_context("/", environ_base=environ):
        limiter._check_request_limit()
        limiter.context.view_rate_limits[0].request_args.append("changed")
    with app.test_request_context("/", environ_base=environ):
        limiter._check_request_limit()
        request_args = limiter.context.view_rate_limits[0].request_args

    assert request_args == ["192.0.2.7", "index"]
