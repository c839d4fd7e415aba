"""Invalid settings stop gunicorn at start with one line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_support import run_gunicorn

INVALID_SETTINGS = [
    ("RATE_LIMIT", "5/10min"),
    ("RATE_LIMIT", "5"),
    ("RATE_LIMIT", "abc"),
    ("RATE_LIMIT", ""),
    ("RATE_LIMIT", "0/minute"),
    ("RATE_LIMIT", "5/0minute"),
    ("RATE_LIMIT", "5/minute;"),
    ("RATE_LIMIT_STRATEGY", "sliding-window"),
    ("REDIS_URL", "http://localhost:6379/0"),
    ("REDIS_URL", "redis://localhost:notaport/0"),
    ("REDIS_URL", "redis://localhost:6379/db"),
    ("REDIS_URL", "redis://"),
    ("REDIS_TIMEOUT", "0"),
    ("RATE_LIMIT_ON_STORAGE_ERROR", "ignore"),
    ("TRUSTED_PROXY_COUNT", "-1"),
    ("TRUSTED_PROXY_COUNT", "one"),
    ("LOG_LEVEL", "LOUD"),
    ("GUNICORN_BIND", "localhost"),
    ("GUNICORN_BIND", "127.0.0.1:99999"),
    ("GUNICORN_WORKERS", "0"),
    ("GUNICORN_WORKERS", "many"),
    ("GUNICORN_WORKER_CLASS", "eventlet"),
    ("GUNICORN_THREADS", "0"),
    ("GUNICORN_ACCESS_LOG", "maybe"),
    ("GUNICORN_REUSE_PORT", "sometimes"),
]


@pytest.mark.parametrize(("name", "value"), INVALID_SETTINGS)
def test_invalid_setting_stops_gunicorn(tmp_path: Path, name: str, value: str) -> None:
    result = run_gunicorn(tmp_path, **{name: value})

    lines = result.stderr.splitlines()
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"server_app: invalid {name}={value!r}: expected ")


def test_redis_password_is_masked(tmp_path: Path) -> None:
    result = run_gunicorn(tmp_path, REDIS_URL="redis://:s3cret@localhost:70000/0")

    assert result.returncode == 1
    assert "s3cret" not in result.stderr
    assert result.stderr.strip() == (
        "server_app: invalid REDIS_URL='redis://:***@localhost:70000/0': "
        "expected a URL such as 'redis://:password@localhost:6379/0'"
    )


def test_unwritable_metrics_dir_stops_gunicorn(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")

    result = run_gunicorn(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(not_a_dir / "m"))

    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("server_app: invalid PROMETHEUS_MULTIPROC_DIR=")


def test_preload_with_gevent_stops_gunicorn(tmp_path: Path) -> None:
    result = run_gunicorn(
        tmp_path, GUNICORN_WORKER_CLASS="gevent", GUNICORN_CMD_ARGS="--preload"
    )

    assert result.returncode == 1
    assert "Booting worker" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "server_app: --preload does not work with the gevent worker: the "
        "master would create the app, and its Redis connection and "
        "thread-local state, before the workers patch Python for gevent. "
        "Remove --preload from GUNICORN_CMD_ARGS"
    )
