"""Tests of the gunicorn settings that each worker resolves once."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest
from gunicorn.config import Config
from server_support import Gunicorn, request, wait_until

from server_app.gunicorn_worker import resolve_settings_once

StartGunicorn = Callable[..., Gunicorn]


def computed_names() -> set[str]:
    """Return the names that Config computes in a property."""
    return {name for name, value in vars(Config).items() if isinstance(value, property)}


def test_resolved_settings_skip_getattr(monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config()
    config.set("keepalive", 7)
    config.set("bind", ["127.0.0.1:8081"])
    resolve_settings_once(config)

    def fail_lookup(self: Config, name: str) -> Any:
        raise AssertionError(f"Config.__getattr__ looked up {name!r}")

    monkeypatch.setattr(Config, "__getattr__", fail_lookup)
    assert config.keepalive == 7
    plain_names = sorted(set(config.settings) - computed_names())
    assert len(plain_names) > 100
    for name in plain_names:
        assert getattr(config, name) == config.settings[name].get(), name
    # A setting that Config computes in a property still goes through it.
    assert config.address == [("127.0.0.1", 8081)]


def test_resolving_keeps_other_configs() -> None:
    worker_config = Config()
    master_config = Config()
    default = master_config.keepalive
    resolve_settings_once(worker_config)
    master_config.set("keepalive", default + 7)
    assert master_config.keepalive == default + 7
    assert worker_config.keepalive == default


def raw_status(port: int, data: bytes) -> int:
    """Send raw bytes on a new connection and return the response status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        status_line = connection.makefile("rb").readline()
    return int(status_line.split()[1])


@pytest.mark.parametrize("worker_class", ["gevent", "sync"])
def test_workers_apply_cmd_args(
    start_gunicorn: StartGunicorn, worker_class: str
) -> None:
    server = start_gunicorn(
        GUNICORN_WORKER_CLASS=worker_class,
        GUNICORN_THREADS="1",
        GUNICORN_CMD_ARGS="--limit-request-line 300",
    )
    short_line = b"GET /?" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    long_line = b"GET /?" + b"a" * 400 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw_status(server.port, short_line) == 200
    assert raw_status(server.port, long_line) == 414
    assert request(server.port).status == 200


def test_reload_workers_apply_settings(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(GUNICORN_CMD_ARGS="--limit-request-line 300")
    long_line = b"GET /?" + b"a" * 400 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    before = set(server.wait_for_workers(3))

    os.kill(server.process.pid, signal.SIGHUP)
    wait_until(
        lambda: (
            not before & set(server.worker_pids()) and len(server.worker_pids()) == 3
        ),
        20,
        "gunicorn replaced its 3 workers after SIGHUP",
    )

    assert raw_status(server.port, long_line) == 414
    assert request(server.port).status == 200
