"""Redis stopped and started under a running gunicorn, for both policies.

One worker keeps the per-process fallback counts and the per-process outage
log lines exact.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from server_support import Gunicorn, RedisServer, request, wait_until

StartGunicorn = Callable[..., Gunicorn]

OUTAGE_STARTED = "is unreachable"
OUTAGE_ENDED = "is reachable again"


@pytest.fixture
def stoppable_redis(
    redis_server: RedisServer, redis_client: redis.Redis
) -> Iterator[RedisServer]:
    """The session's Redis, started again after the test if it stopped it."""
    yield redis_server
    if not redis_server.process.running():
        redis_server.start()


def test_fallback_serves_from_memory(
    start_gunicorn: StartGunicorn, stoppable_redis: RedisServer
) -> None:
    server = start_gunicorn(
        RATE_LIMIT="3/minute",
        RATE_LIMIT_ON_STORAGE_ERROR="fallback",
        GUNICORN_WORKERS="1",
    )
    assert request(server.port).status == 200

    stoppable_redis.stop()
    during = [request(server.port) for _ in range(4)]
    health = request(server.port, "/healthz")

    # The in-memory fallback counts from zero, separately from Redis, and
    # flask-limiter's own hook adds the headers.
    assert [r.status for r in during] == [200, 200, 200, 429]
    assert [r.headers["X-RateLimit-Limit"] for r in during] == ["3"] * 4
    remaining = [r.headers["X-RateLimit-Remaining"] for r in during]
    assert remaining == ["2", "1", "0", "0"]
    assert 0 <= int(during[3].headers["Retry-After"]) <= 60
    assert health.status == 503
    assert health.json() == {"status": "unavailable", "storage": "unreachable"}

    stoppable_redis.start()

    def limited_in_redis_again() -> bool:
        assert request(server.port).status in (200, 429)
        with stoppable_redis.client() as client:
            return bool(client.keys("LIMITS:*"))

    # flask-limiter probes Redis again after 1, 2, 4 ... 32 s of outage.
    wait_until(limited_in_redis_again, 40, "the limiter uses Redis again")
    assert request(server.port, "/healthz").status == 200
    log = server.log()
    assert log.count(OUTAGE_STARTED) == 1
    assert log.count(OUTAGE_ENDED) == 1
    assert "Traceback" not in log


def test_reject_answers_503_until_redis_returns(
    start_gunicorn: StartGunicorn, stoppable_redis: RedisServer
) -> None:
    server = start_gunicorn(
        RATE_LIMIT="3/minute",
        RATE_LIMIT_ON_STORAGE_ERROR="reject",
        GUNICORN_WORKERS="1",
    )
    assert request(server.port).status == 200

    stoppable_redis.stop()
    during = [request(server.port) for _ in range(3)]

    assert [r.status for r in during] == [503, 503, 503]
    assert during[0].json() == {"error": "rate limit storage unavailable"}
    assert request(server.port, "/healthz").status == 503

    stoppable_redis.start()
    after = [request(server.port).status for _ in range(4)]

    # Redis lost the counter on restart, so a new window starts.
    assert after == [200, 200, 200, 429]
    log = server.log()
    assert log.count(OUTAGE_STARTED) == 1
    assert log.count(OUTAGE_ENDED) == 1
    assert "Traceback" not in log


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_paused_redis_rejects_waiting_requests(
    start_gunicorn: StartGunicorn, stoppable_redis: RedisServer, worker_class: str
) -> None:
    server = start_gunicorn(
        RATE_LIMIT="100/minute",
        RATE_LIMIT_ON_STORAGE_ERROR="reject",
        REDIS_TIMEOUT="0.5",
        GUNICORN_WORKERS="1",
        GUNICORN_WORKER_CLASS=worker_class,
    )
    assert request(server.port).status == 200

    # A stopped redis-server keeps its connections open but never replies.
    stoppable_redis.process.send_signal(signal.SIGSTOP)
    try:
        # request() gives up after 10 s, so a request left waiting fails here.
        with ThreadPoolExecutor(max_workers=8) as pool:
            during = list(pool.map(lambda _: request(server.port), range(8)))
    finally:
        stoppable_redis.process.send_signal(signal.SIGCONT)
    after = [request(server.port) for _ in range(2)]

    assert [r.status for r in during] == [503] * 8
    assert {r.body for r in during} == {b'{"error":"rate limit storage unavailable"}\n'}
    assert [r.status for r in after] == [200, 200]
    log = server.log()
    assert log.count(OUTAGE_STARTED) == 1
    assert log.count(OUTAGE_ENDED) == 1
    assert "Traceback" not in log
