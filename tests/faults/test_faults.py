"""Faults with real processes: Redis killed or restarted, the server killed or down."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from live_server import StartServer
from loadgen import Endpoint, LoadResult, run_load

from bench.processes import GunicornServer, RedisServer, free_port

HUGE_LIMIT = "1000000/minute"
WORKERS = 2
OUTAGE_MESSAGE = "is unreachable"
# flask-limiter's own warning when it switches to its in-memory fallback.
FALLBACK_MESSAGE = "falling back to in-memory storage"
RECOVERY_MESSAGE = "is reachable again"
# flask-limiter retries a dead storage with a growing pause while it serves
# from the in-memory fallback, so recovery may take this long after Redis is back.
RECOVERY_TIMEOUT_SECONDS = 70.0


def get(
    server: GunicornServer, path: str = "/", source: str = "127.0.0.1"
) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection(
        "127.0.0.1", server.port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_until_redis_counts(server: GunicornServer, redis_server: RedisServer) -> None:
    """Send requests until one is counted in Redis again, or fail at the timeout."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        get(server)
        if redis_server.key_count() > 0:
            return
        time.sleep(0.5)
    pytest.fail(f"no request reached Redis in {RECOVERY_TIMEOUT_SECONDS} s")


def load_through_redis_outage(
    server: GunicornServer, redis_server: RedisServer
) -> LoadResult:
    """Run 12 s of load; kill Redis after 3 s and start it again after 7 s."""
    endpoint = Endpoint("127.0.0.1", server.port)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        load = executor.submit(run_load, [endpoint], ["127.0.0.1"], 8, 12.0)
        time.sleep(3)
        redis_server.kill()
        time.sleep(4)
        redis_server.start()
        return load.result(timeout=60)


@pytest.mark.parametrize(
    ("policy", "outage_statuses"),
    [("fallback", {200}), ("reject", {200, 503})],
)
def test_redis_killed_mid_load(
    redis_server: RedisServer,
    start_server: StartServer,
    policy: str,
    outage_statuses: set[int],
) -> None:
    server = start_server(
        {
            "RATE_LIMIT": HUGE_LIMIT,
            "REDIS_URL": redis_server.url(),
            "RATE_LIMIT_ON_STORAGE_ERROR": policy,
            "GUNICORN_WORKERS": str(WORKERS),
        }
    )
    workers_before = server.wait_for_workers(WORKERS)

    result = load_through_redis_outage(server, redis_server)
    wait_until_redis_counts(server, redis_server)

    statuses = result.by_address["127.0.0.1"].statuses
    assert set(statuses) == outage_statuses, statuses
    assert result.socket_errors == 0
    assert result.invalid_bodies == 0
    assert get(server, "/healthz")[0] == 200
    assert get(server) == (200, {"message": "hello world!"})
    # The same workers served before, during and after the outage.
    assert sorted(server.worker_pids()) == workers_before
    log_text = server.process.output()
    assert "Traceback" not in log_text
    assert 1 <= log_text.count(OUTAGE_MESSAGE) <= WORKERS
    assert 1 <= log_text.count(RECOVERY_MESSAGE) <= WORKERS
    assert log_text.count(FALLBACK_MESSAGE) <= WORKERS


def test_redis_restart_loses_counters(
    redis_server: RedisServer, start_server: StartServer
) -> None:
    # One worker, so the address that worker remembers as over its limit is
    # the same for every request of this test.
    server = start_server(
        {
            "RATE_LIMIT": "3/minute",
            "REDIS_URL": redis_server.url(),
            "GUNICORN_WORKERS": "1",
        }
    )
    exhausted, partly_used = "127.0.0.2", "127.0.0.3"
    assert [get(server, source=exhausted)[0] for _ in range(4)] == [200, 200, 200, 429]
    assert get(server, source=partly_used)[0] == 200

    redis_server.kill()
    redis_server.start()

    # The worker still remembers the exhausted address is over its limit until the
    # window resets; the partly used address starts a new window in Redis.
    assert get(server, source=exhausted)[0] == 429
    assert [get(server, source=partly_used)[0] for _ in range(4)] == [
        200,
        200,
        200,
        429,
    ]
    assert get(server, "/healthz")[0] == 200
    assert "Traceback" not in server.process.output()


def test_server_sigkill_keeps_limit(
    redis_server: RedisServer, start_server: StartServer
) -> None:
    settings = {
        "RATE_LIMIT": "3/minute",
        "REDIS_URL": redis_server.url(),
        "GUNICORN_WORKERS": str(WORKERS),
    }
    first = start_server(settings)
    workers = first.wait_for_workers(WORKERS)
    assert [get(first)[0] for _ in range(3)] == [200, 200, 200]

    # SIGKILL gives gunicorn no chance to clean up, as in a crash. A service
    # manager would then start a new server, as this test does.
    first.process.stop(signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    second = start_server(settings)

    # The counter lives in Redis, so the new server rejects the fourth request.
    status, body = get(second)
    assert status == 429
    assert body == {"error": "rate limit exceeded", "limit": "3 per 1 minute"}


def test_client_with_server_down() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    env = {
        **os.environ,
        "CLIENT_SERVER_URL": url,
        "CLIENT_TOTAL_REQUESTS": "3",
        "CLIENT_TOTAL_FAILURE_RETRIES": "2",
        "CLIENT_BACKOFF_FACTOR": "0.01",
    }

    completed = subprocess.run(
        [sys.executable, "-m", "client_app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 4
    assert completed.stdout == ""
    stderr_lines = completed.stderr.splitlines()
    errors = [line for line in stderr_lines if line.startswith("ERROR:")]
    assert len(errors) == 1, completed.stderr
    assert f"Request to {url} failed" in errors[0]
    assert "Connection refused" in errors[0]
    assert errors[0].endswith("(after 2 retries)")
    retries = [line for line in stderr_lines if "Retrying (Retry(" in line]
    assert len(retries) == 2
    assert "Traceback" not in completed.stderr
