"""Fixtures that start a real redis-server and real gunicorn servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from server_support import Gunicorn, RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session's Redis, emptied before each test."""
    if not redis_server.process.running():
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url())
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def start_gunicorn(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> Iterator[Callable[..., Gunicorn]]:
    """Return a function that starts gunicorn with extra environment values."""
    servers: list[Gunicorn] = []

    def start(**env: str) -> Gunicorn:
        directory = tmp_path / f"server-{len(servers)}"
        directory.mkdir()
        settings = {
            "REDIS_URL": redis_server.url(),
            "GUNICORN_WORKERS": "3",
            "LOG_LEVEL": "INFO",
            **env,
        }
        server = Gunicorn(directory, settings)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
