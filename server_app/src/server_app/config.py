"""Read and validate every setting of the server from the environment.

Each invalid value raises :class:`ConfigError` with one line that names the
variable, the value and a valid example, so both the gunicorn master and
``create_app`` stop before serving anything.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Literal, cast
from urllib.parse import urlsplit, urlunsplit

from limits import RateLimitItem, parse_many

DEFAULT_RATE_LIMIT = "5/10minute"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_BIND = "0.0.0.0:80"

STRATEGIES = ("fixed-window", "moving-window")
STORAGE_ERROR_POLICIES = ("fallback", "reject")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
WORKER_CLASSES = ("gevent", "gthread", "sync")
REDIS_SCHEMES = ("redis", "rediss", "redis+unix")

MAX_TRUSTED_PROXY_COUNT = 10
MAX_WORKERS = 64
MAX_THREADS = 64
MAX_REDIS_TIMEOUT = 60.0

# limits reads "5/0minute" as 5 per 1 minute, so a zero multiple is rejected
# here instead of silently becoming a different limit.
_ZERO_MULTIPLE = re.compile(r"(?:/|\bper\b)\s*0+\s*[a-z]", re.IGNORECASE)

Strategy = Literal["fixed-window", "moving-window"]
StorageErrorPolicy = Literal["fallback", "reject"]
WorkerClass = Literal["gevent", "gthread", "sync"]


class ConfigError(ValueError):
    """An environment variable contains a value the server cannot use."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"invalid {name}={value!r}: expected {expected}")
        self.name = name
        self.value = value


@dataclasses.dataclass(frozen=True)
class AppSettings:
    """Settings of the Flask application, read from the environment."""

    rate_limit: str = DEFAULT_RATE_LIMIT
    rate_limit_strategy: Strategy = "fixed-window"
    redis_url: str = DEFAULT_REDIS_URL
    redis_timeout: float = 1.0
    on_storage_error: StorageErrorPolicy = "fallback"
    trusted_proxy_count: int = 0
    log_level: str = "INFO"

    @property
    def limits(self) -> list[RateLimitItem]:
        """The parsed items of ``rate_limit``, most restrictive first."""
        return sorted(parse_many(self.rate_limit))

    @property
    def redis_url_for_logs(self) -> str:
        """``redis_url`` with any password replaced by ``***``."""
        return mask_password(self.redis_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AppSettings:
        """Build the settings from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        return cls(
            rate_limit=parse_rate_limit(env.get("RATE_LIMIT", DEFAULT_RATE_LIMIT)),
            rate_limit_strategy=cast(
                Strategy,
                parse_choice(
                    "RATE_LIMIT_STRATEGY",
                    env.get("RATE_LIMIT_STRATEGY", "fixed-window"),
                    STRATEGIES,
                ),
            ),
            redis_url=parse_redis_url(env.get("REDIS_URL", DEFAULT_REDIS_URL)),
            redis_timeout=parse_float(
                "REDIS_TIMEOUT", env.get("REDIS_TIMEOUT", "1"), MAX_REDIS_TIMEOUT
            ),
            on_storage_error=cast(
                StorageErrorPolicy,
                parse_choice(
                    "RATE_LIMIT_ON_STORAGE_ERROR",
                    env.get("RATE_LIMIT_ON_STORAGE_ERROR", "fallback"),
                    STORAGE_ERROR_POLICIES,
                ),
            ),
            trusted_proxy_count=parse_int(
                "TRUSTED_PROXY_COUNT",
                env.get("TRUSTED_PROXY_COUNT", "0"),
                minimum=0,
                maximum=MAX_TRUSTED_PROXY_COUNT,
            ),
            log_level=parse_log_level(env.get("LOG_LEVEL", "INFO")),
        )


@dataclasses.dataclass(frozen=True)
class GunicornSettings:
    """Settings of the gunicorn master, read from ``GUNICORN_*`` variables."""

    bind: str
    workers: int
    worker_class: WorkerClass
    threads: int
    access_log: bool
    reuse_port: bool

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, cpu_count: int | None = None
    ) -> GunicornSettings:
        """Build the settings from ``environ``, sizing defaults by ``cpu_count``."""
        env = os.environ if environ is None else environ
        cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
        bind = parse_bind(env.get("GUNICORN_BIND", DEFAULT_BIND))
        worker_class = cast(
            WorkerClass,
            parse_choice(
                "GUNICORN_WORKER_CLASS",
                env.get("GUNICORN_WORKER_CLASS", "gevent"),
                WORKER_CLASSES,
            ),
        )
        threads = parse_int(
            "GUNICORN_THREADS",
            env.get("GUNICORN_THREADS", "4"),
            minimum=1,
            maximum=MAX_THREADS,
        )
        return cls(
            bind=bind,
            workers=parse_int(
                "GUNICORN_WORKERS",
                env.get("GUNICORN_WORKERS", str(default_workers(cpus))),
                minimum=1,
                maximum=MAX_WORKERS,
            ),
            worker_class=worker_class,
            threads=threads,
            access_log=parse_bool(
                "GUNICORN_ACCESS_LOG", env.get("GUNICORN_ACCESS_LOG", "false")
            ),
            reuse_port=parse_reuse_port(
                env.get("GUNICORN_REUSE_PORT", "auto"), worker_class, threads, bind
            ),
        )


def default_workers(cpu_count: int) -> int:
    """Return one worker per CPU plus one, capped at 8.

    Each gevent or gthread worker already serves many requests at once, so
    more processes than CPUs only add memory and context switches.
    """
    return min(cpu_count + 1, 8)


def parse_reuse_port(
    value: str, worker_class: WorkerClass, threads: int, bind: str
) -> bool:
    """Return whether each worker gets a listening socket of its own.

    With SO_REUSEPORT the kernel spreads new connections over the workers'
    sockets by address and port. Without it the workers accept from one
    shared socket, and a gevent or gthread worker that wakes first may take
    most of a burst of connections, so one worker serves them while the others
    idle. A sync worker serves one connection at a time, so ``auto`` leaves it
    on the shared socket, where an idle worker takes the next connection.
    gunicorn runs sync with more than one thread as gthread, so ``auto``
    treats it as gthread. Each worker would replace the file of a ``unix:``
    socket with its own, so ``auto`` is off there and ``true`` is an error.
    """
    name = "GUNICORN_REUSE_PORT"
    if value.strip().lower() == "auto":
        runs_sync = worker_class == "sync" and threads == 1
        return not runs_sync and not bind.startswith("unix:")
    try:
        enabled = parse_bool(name, value)
    except ConfigError:
        raise ConfigError(name, value, "auto, true or false") from None
    if enabled and bind.startswith("unix:"):
        raise ConfigError(
            name, value, f"auto or false with GUNICORN_BIND={bind!r}, a unix socket"
        )
    return enabled


def parse_rate_limit(value: str) -> str:
    """Return ``value`` if limits parses it into items with non-zero numbers."""
    example = "a limit such as '5/10minute' or '10/day;300/30minute'"
    if _ZERO_MULTIPLE.search(value):
        raise ConfigError("RATE_LIMIT", value, example)
    try:
        items = parse_many(value)
    except ValueError:
        raise ConfigError("RATE_LIMIT", value, example) from None
    if any(item.amount < 1 for item in items):
        raise ConfigError("RATE_LIMIT", value, example)
    return value.strip()


def parse_redis_url(value: str) -> str:
    """Return ``value`` if it is a redis://, rediss:// or redis+unix:// URL."""
    masked = mask_password(value)
    example = "a URL such as 'redis://:password@localhost:6379/0'"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ConfigError("REDIS_URL", masked, example) from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError("REDIS_URL", masked, example)
    if parts.scheme == "redis+unix":
        if not parts.path:
            raise ConfigError(
                "REDIS_URL",
                masked,
                "a socket URL such as 'redis+unix:///run/redis.sock'",
            )
        return value
    if not parts.hostname or port == 0:
        raise ConfigError("REDIS_URL", masked, example)
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ConfigError("REDIS_URL", masked, example)
    return value


def mask_password(url: str) -> str:
    """Return ``url`` with the password of its user part replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ConfigError(name, value, "one of " + ", ".join(choices))
    return value


def parse_int(name: str, value: str, *, minimum: int, maximum: int) -> int:
    """Return ``value`` as an int between ``minimum`` and ``maximum``."""
    expected = f"an integer from {minimum} to {maximum}"
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(name, value, expected) from None
    if not minimum <= number <= maximum:
        raise ConfigError(name, value, expected)
    return number


def parse_float(name: str, value: str, maximum: float) -> float:
    """Return ``value`` as a number of seconds above 0 and up to ``maximum``."""
    expected = f"a number of seconds above 0 and up to {maximum:g}, such as 1.5"
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(name, value, expected) from None
    if not 0 < number <= maximum:
        raise ConfigError(name, value, expected)
    return number


def parse_bool(name: str, value: str) -> bool:
    """Return ``value`` as a bool, accepting true/false, yes/no, on/off, 1/0."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, value, "true or false")


def parse_log_level(value: str) -> str:
    """Return ``value`` in upper case if it names a standard logging level."""
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError("LOG_LEVEL", value, "one of " + ", ".join(LOG_LEVELS))
    return level


def parse_bind(value: str) -> str:
    """Return ``value`` if it is ``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:PATH``."""
    example = "an address such as '0.0.0.0:80', '[::]:80' or 'unix:/run/app.sock'"
    if value.startswith("unix:"):
        if len(value) == len("unix:"):
            raise ConfigError("GUNICORN_BIND", value, example)
        return value
    host, separator, port = value.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ConfigError("GUNICORN_BIND", value, example)
    if not 1 <= int(port) <= 65535:
        raise ConfigError("GUNICORN_BIND", value, example)
    return value
