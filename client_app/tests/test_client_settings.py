"""Settings: defaults, accepted values, and rejection of invalid values."""

from __future__ import annotations

import pytest
from client_support import run_client

from client_app.settings import InvalidSettingError, Settings

# The part of the error line after "expected", per variable.
EXPECTED = {
    "CLIENT_SERVER_URL": (
        "an http:// or https:// URL with a host, for example http://localhost:80/"
    ),
    "CLIENT_TOTAL_REQUESTS": "a whole number from 1 to 1000000, for example 7",
    "CLIENT_TOTAL_FAILURE_RETRIES": "a whole number from 0 to 100, for example 4",
    "CLIENT_BACKOFF_FACTOR": (
        "a number of seconds from 0 to 3600 (integer or decimal), for example 1"
    ),
    "CLIENT_MAX_BACKOFF": (
        "a number of seconds greater than 0 and at most 3600 (integer or decimal),"
        " for example 120"
    ),
    "CLIENT_CONNECT_TIMEOUT": (
        "a number of seconds greater than 0 and at most 300 (integer or decimal),"
        " for example 5"
    ),
    "CLIENT_READ_TIMEOUT": (
        "a number of seconds greater than 0 and at most 300 (integer or decimal),"
        " for example 10"
    ),
    "CLIENT_LOG_LEVEL": (
        "one of DEBUG, INFO, WARNING, ERROR, CRITICAL, for example DEBUG"
    ),
}

INVALID_SETTINGS = [
    ("CLIENT_SERVER_URL", "ftp://localhost/"),
    ("CLIENT_SERVER_URL", "localhost:80"),
    ("CLIENT_SERVER_URL", "http://"),
    ("CLIENT_SERVER_URL", "http://localhost:99999/"),
    ("CLIENT_SERVER_URL", " http://localhost/"),
    ("CLIENT_SERVER_URL", ""),
    ("CLIENT_TOTAL_REQUESTS", "abc"),
    ("CLIENT_TOTAL_REQUESTS", "-1"),
    ("CLIENT_TOTAL_REQUESTS", "0"),
    ("CLIENT_TOTAL_REQUESTS", "7.5"),
    ("CLIENT_TOTAL_REQUESTS", "1000001"),
    ("CLIENT_TOTAL_REQUESTS", "99999999999999999999999"),
    ("CLIENT_TOTAL_REQUESTS", "1_000"),
    ("CLIENT_TOTAL_REQUESTS", ""),
    ("CLIENT_TOTAL_FAILURE_RETRIES", "abc"),
    ("CLIENT_TOTAL_FAILURE_RETRIES", "-1"),
    ("CLIENT_TOTAL_FAILURE_RETRIES", "101"),
    ("CLIENT_TOTAL_FAILURE_RETRIES", "2.5"),
    ("CLIENT_BACKOFF_FACTOR", "abc"),
    ("CLIENT_BACKOFF_FACTOR", "-1"),
    ("CLIENT_BACKOFF_FACTOR", "-0.5"),
    ("CLIENT_BACKOFF_FACTOR", "3601"),
    ("CLIENT_BACKOFF_FACTOR", "nan"),
    ("CLIENT_BACKOFF_FACTOR", "inf"),
    ("CLIENT_BACKOFF_FACTOR", "1e3"),
    ("CLIENT_BACKOFF_FACTOR", "1,5"),
    ("CLIENT_MAX_BACKOFF", "0"),
    ("CLIENT_MAX_BACKOFF", "abc"),
    ("CLIENT_MAX_BACKOFF", "-1"),
    ("CLIENT_MAX_BACKOFF", "3601"),
    ("CLIENT_CONNECT_TIMEOUT", "0"),
    ("CLIENT_CONNECT_TIMEOUT", "abc"),
    ("CLIENT_CONNECT_TIMEOUT", "301"),
    ("CLIENT_READ_TIMEOUT", "0"),
    ("CLIENT_READ_TIMEOUT", "-1"),
    ("CLIENT_READ_TIMEOUT", "100000"),
    ("CLIENT_LOG_LEVEL", "LOUD"),
    ("CLIENT_LOG_LEVEL", ""),
]


def test_settings_defaults() -> None:
    settings = Settings.from_environ({})

    assert settings.server_url == "http://localhost:80/"
    assert settings.total_requests == 7
    assert settings.total_failure_retries == 4
    assert settings.backoff_factor == 1.0
    assert settings.max_backoff == 120.0
    assert settings.connect_timeout == 5.0
    assert settings.read_timeout == 10.0
    assert settings.log_level == "DEBUG"


def test_settings_read_every_variable() -> None:
    settings = Settings.from_environ(
        {
            "CLIENT_SERVER_URL": "https://server.example:8443/path",
            "CLIENT_TOTAL_REQUESTS": "3",
            "CLIENT_TOTAL_FAILURE_RETRIES": "0",
            "CLIENT_BACKOFF_FACTOR": "0.5",
            "CLIENT_MAX_BACKOFF": "30",
            "CLIENT_CONNECT_TIMEOUT": "1.5",
            "CLIENT_READ_TIMEOUT": ".25",
            "CLIENT_LOG_LEVEL": "info",
        }
    )

    assert settings.server_url == "https://server.example:8443/path"
    assert settings.total_requests == 3
    assert settings.total_failure_retries == 0
    assert settings.backoff_factor == 0.5
    assert settings.max_backoff == 30.0
    assert settings.connect_timeout == 1.5
    assert settings.read_timeout == 0.25
    assert settings.log_level == "INFO"


@pytest.mark.parametrize(("value", "expected"), [("1", 1.0), ("0", 0.0), ("0.5", 0.5)])
def test_backoff_factor_integer_or_decimal(value: str, expected: float) -> None:
    settings = Settings.from_environ({"CLIENT_BACKOFF_FACTOR": value})

    assert settings.backoff_factor == expected


def test_settings_error_names_variable() -> None:
    with pytest.raises(InvalidSettingError) as raised:
        Settings.from_environ({"CLIENT_TOTAL_REQUESTS": "abc"})

    assert raised.value.name == "CLIENT_TOTAL_REQUESTS"
    assert raised.value.value == "abc"
    assert str(raised.value) == (
        "Invalid CLIENT_TOTAL_REQUESTS='abc': expected a whole number from 1 to"
        " 1000000, for example 7."
    )


@pytest.mark.parametrize(("name", "value"), INVALID_SETTINGS)
def test_invalid_setting_exits_2(name: str, value: str, closed_port_url: str) -> None:
    # A closed port, so that a setting wrongly accepted cannot reach a server.
    settings = {"CLIENT_SERVER_URL": closed_port_url, name: value}

    result = run_client(settings)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"ERROR:client_app:Invalid {name}={value!r}: expected {EXPECTED[name]}."
    ]


def test_invalid_setting_exits_2_from_console_script(closed_port_url: str) -> None:
    settings = {"CLIENT_SERVER_URL": closed_port_url, "CLIENT_BACKOFF_FACTOR": "-1"}

    result = run_client(settings, console_script=True)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "ERROR:client_app:Invalid CLIENT_BACKOFF_FACTOR='-1': expected "
        + EXPECTED["CLIENT_BACKOFF_FACTOR"]
        + "."
    ]


def test_invalid_url_error_masks_password() -> None:
    result = run_client({"CLIENT_SERVER_URL": "ftp://user:secret@localhost/"})

    assert result.returncode == 2
    assert "secret" not in result.stderr
    assert result.stderr.splitlines() == [
        "ERROR:client_app:Invalid CLIENT_SERVER_URL='ftp://user:***@localhost/':"
        f" expected {EXPECTED['CLIENT_SERVER_URL']}."
    ]
