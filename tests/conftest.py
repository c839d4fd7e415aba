"""Fixtures that start a real redis-server and real gunicorn servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from live_server import StartServer

from bench.processes import GunicornServer, RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Return a function that starts our server with settings; stop all at teardown."""
    started: list[GunicornServer] = []

    def start(settings: Mapping[str, str]) -> GunicornServer:
        name = f"server_app-{len(started)}"
        server = GunicornServer(tmp_path / name, settings, name=name)
        started.append(server)
        server.start()
        return server

    yield start
    for server in reversed(started):
        server.stop()
