"""Fixtures that start local servers for the client tests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from client_live_service import RedisServer, Service, start_service
from client_support import Script, ScriptedServer, handler_class


@pytest.fixture
def scripted_server() -> Iterator[Callable[[Script], ScriptedServer]]:
    """Start scripted servers on free loopback ports and stop them afterwards."""
    started: list[ThreadingHTTPServer] = []

    def start(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        http_server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class(server))
        http_server.daemon_threads = True
        port = http_server.server_address[1]
        server.url = f"http://127.0.0.1:{port}/"
        threading.Thread(target=http_server.serve_forever, daemon=True).start()
        started.append(http_server)
        return server

    yield start

    for http_server in started:
        http_server.shutdown()
        http_server.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """Return a loopback URL on a port that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Start a redis-server without persistence and stop it afterwards."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def live_service(
    tmp_path: Path, redis_server: RedisServer
) -> Iterator[Callable[..., Service]]:
    """Start gunicorn serving server_app on the test's redis-server.

    Call it with the RATE_LIMIT value and any other service variables.
    """
    started: list[Service] = []

    def start(rate_limit: str, **settings: str) -> Service:
        service = start_service(tmp_path, redis_server.url(), rate_limit, **settings)
        started.append(service)
        return service

    yield start

    for service in started:
        service.stop()
