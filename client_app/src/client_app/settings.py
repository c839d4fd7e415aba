"""Read and validate the client's settings from the environment."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

# A whole number written in plain digits. int() alone would also accept "+7",
# " 7" and "1_000", which are more likely typing mistakes than intent.
_WHOLE_NUMBER = re.compile(r"[0-9]+")
# A decimal number such as "1", "0.5" or ".5". float() alone would also accept
# "nan", "inf" and "1e9", none of which is a sensible number of seconds.
_DECIMAL_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class InvalidSettingError(ValueError):
    """Error for an environment variable whose value the client cannot use."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        self.name = name
        self.value = value
        self.expected = expected
        # repr() keeps the message on one line even if the value has a newline.
        super().__init__(f"Invalid {name}={value!r}: expected {expected}.")


@dataclass(frozen=True)
class Settings:
    """The client's validated settings, with every duration in seconds."""

    server_url: str = "http://localhost:80/"
    total_requests: int = 7
    total_failure_retries: int = 4
    backoff_factor: float = 1.0
    max_backoff: float = 120.0
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    log_level: str = "DEBUG"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Build the settings from environment variables, using defaults for
        unset ones.

        Raises InvalidSettingError for the first variable with an invalid value.
        """
        defaults = cls()
        return cls(
            server_url=_read_url(environ, "CLIENT_SERVER_URL", defaults.server_url),
            total_requests=_read_whole_number(
                environ,
                "CLIENT_TOTAL_REQUESTS",
                defaults.total_requests,
                minimum=1,
                maximum=1_000_000,
            ),
            total_failure_retries=_read_whole_number(
                environ,
                "CLIENT_TOTAL_FAILURE_RETRIES",
                defaults.total_failure_retries,
                minimum=0,
                maximum=100,
            ),
            backoff_factor=_read_seconds(
                environ,
                "CLIENT_BACKOFF_FACTOR",
                defaults.backoff_factor,
                allow_zero=True,
                maximum=3600,
            ),
            max_backoff=_read_seconds(
                environ,
                "CLIENT_MAX_BACKOFF",
                defaults.max_backoff,
                allow_zero=False,
                maximum=3600,
            ),
            connect_timeout=_read_seconds(
                environ,
                "CLIENT_CONNECT_TIMEOUT",
                defaults.connect_timeout,
                allow_zero=False,
                maximum=300,
            ),
            read_timeout=_read_seconds(
                environ,
                "CLIENT_READ_TIMEOUT",
                defaults.read_timeout,
                allow_zero=False,
                maximum=300,
            ),
            log_level=_read_log_level(environ, "CLIENT_LOG_LEVEL", defaults.log_level),
        )

    @property
    def log_level_number(self) -> int:
        """The log level as the number the logging module uses."""
        return logging.getLevelNamesMapping()[self.log_level]


def url_for_logs(url: str) -> str:
    """Return url with any password in it replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # urlsplit rejects some malformed hosts, such as an unclosed "[".
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _read_url(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(name)
    if value is None:
        return default

    expected = (
        "an http:// or https:// URL with a host, for example http://localhost:80/"
    )
    invalid = InvalidSettingError(name, url_for_logs(value), expected)
    if value != value.strip():
        raise invalid
    try:
        parts = urlsplit(value)
        # Reading .port raises ValueError when the port is not a number 0-65535.
        parts.port  # noqa: B018
    except ValueError:
        raise invalid from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid
    return value


def _read_whole_number(
    environ: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int
) -> int:
    value = environ.get(name)
    if value is None:
        return default

    expected = f"a whole number from {minimum} to {maximum}, for example {default}"
    if not _WHOLE_NUMBER.fullmatch(value):
        raise InvalidSettingError(name, value, expected)
    number = int(value)
    if not minimum <= number <= maximum:
        raise InvalidSettingError(name, value, expected)
    return number


def _read_seconds(
    environ: Mapping[str, str],
    name: str,
    default: float,
    *,
    allow_zero: bool,
    maximum: float,
) -> float:
    value = environ.get(name)
    if value is None:
        return default

    if allow_zero:
        bounds = f"from 0 to {maximum:g}"
    else:
        bounds = f"greater than 0 and at most {maximum:g}"
    expected = (
        f"a number of seconds {bounds} (integer or decimal), for example {default:g}"
    )
    if not _DECIMAL_NUMBER.fullmatch(value):
        raise InvalidSettingError(name, value, expected)
    seconds = float(value)
    too_small = seconds < 0 if allow_zero else seconds <= 0
    if too_small or seconds > maximum:
        raise InvalidSettingError(name, value, expected)
    return seconds


def _read_log_level(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(name)
    if value is None:
        return default

    if value.upper() not in LOG_LEVELS:
        expected = f"one of {', '.join(LOG_LEVELS)}, for example {default}"
        raise InvalidSettingError(name, value, expected)
    return value.upper()
