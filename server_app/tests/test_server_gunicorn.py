"""End-to-end tests of the server under gunicorn with a real Redis."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from server_support import Gunicorn, Response, request, sample, scrape

StartGunicorn = Callable[..., Gunicorn]

HELLO = {"message": "hello world!"}


def statuses(responses: list[Response]) -> Counter[int]:
    return Counter(response.status for response in responses)


def get_many(port: int, count: int, source: str = "127.0.0.1") -> list[Response]:
    return [request(port, source=source) for _ in range(count)]


def test_index_counts_every_get(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(RATE_LIMIT="100/minute")

    responses = get_many(server.port, 3)

    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.json() for r in responses] == [HELLO, HELLO, HELLO]
    assert responses[0].headers["Content-Type"] == "application/json"
    assert [r.headers["X-RateLimit-Limit"] for r in responses] == ["100"] * 3
    remaining = [r.headers["X-RateLimit-Remaining"] for r in responses]
    assert remaining == ["99", "98", "97"]
    metrics = scrape(server.port)
    assert sample(metrics, "flask_http_request_total", method="GET", status="200") == 3
    assert (
        sample(metrics, "client_requests_total", address="127.0.0.1", status="200") == 3
    )


def assert_two_admitted(port: int) -> None:
    metrics = scrape(port)
    assert sample(metrics, "flask_http_request_total", method="GET", status="200") == 2
    assert sample(metrics, "flask_http_request_total", method="GET", status="429") == 13
    assert (
        sample(metrics, "client_requests_total", address="127.0.0.1", status="200") == 2
    )
    assert (
        sample(metrics, "client_requests_total", address="127.0.0.1", status="429")
        == 13
    )


def test_limit_exact_across_three_workers(
    start_gunicorn: StartGunicorn, redis_client: redis.Redis
) -> None:
    server = start_gunicorn(RATE_LIMIT="2/minute", GUNICORN_WORKERS="3")

    responses = get_many(server.port, 15)

    assert [r.status for r in responses] == [200, 200] + [429] * 13
    keys = redis_client.keys("LIMITS:*")
    assert keys == [b"LIMITS:LIMITER/127.0.0.1/index/2/1/minute"]
    assert int(redis_client.get(keys[0]) or 0) >= 2
    assert 0 < redis_client.ttl(keys[0]) <= 60
    for _ in range(3):
        assert_two_admitted(server.port)

    server.restart()

    assert request(server.port).status == 429
    metrics = scrape(server.port)
    assert sample(metrics, "flask_http_request_total", method="GET", status="200") == 0
    assert sample(metrics, "flask_http_request_total", method="GET", status="429") == 1


@pytest.mark.parametrize("worker_class", ["gevent", "gthread", "sync"])
def test_limit_exact_for_concurrent_gets(
    start_gunicorn: StartGunicorn, worker_class: str
) -> None:
    server = start_gunicorn(
        RATE_LIMIT="2/minute", GUNICORN_WORKERS="3", GUNICORN_WORKER_CLASS=worker_class
    )

    with ThreadPoolExecutor(max_workers=15) as pool:
        responses = list(pool.map(lambda _: request(server.port), range(15)))

    assert statuses(responses) == {200: 2, 429: 13}
    for _ in range(3):
        assert_two_admitted(server.port)


def limit_script_connections(redis_client: redis.Redis, before: set[str]) -> int:
    """Count the Redis connections opened since ``before``, a set of client
    ids, whose last command ran the limit script."""
    clients = redis_client.client_list()
    return sum(1 for c in clients if c["id"] not in before and c["cmd"] == "evalsha")


def test_gevent_worker_pipelines_on_one_connection(
    start_gunicorn: StartGunicorn, redis_client: redis.Redis
) -> None:
    # Other tests' apps in this process may keep connections to this Redis.
    before = {client["id"] for client in redis_client.client_list()}
    server = start_gunicorn(
        RATE_LIMIT="150/minute", GUNICORN_WORKERS="2", GUNICORN_WORKER_CLASS="gevent"
    )

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(lambda _: request(server.port), range(200)))

    assert statuses(responses) == {200: 150, 429: 50}
    remaining = sorted(
        int(r.headers["X-RateLimit-Remaining"]) for r in responses if r.status == 200
    )
    assert remaining == list(range(150))
    # Redis also counts the rejected hits that reached it before each worker
    # learned that the window was full.
    key = b"LIMITS:LIMITER/127.0.0.1/index/150/1/minute"
    assert int(redis_client.get(key) or 0) >= 150
    # 32 requests at a time shared at most one Redis connection per worker.
    assert 1 <= limit_script_connections(redis_client, before) <= 2
    metrics = scrape(server.port)
    totals = {
        status: sample(metrics, "flask_http_request_total", method="GET", status=status)
        for status in ("200", "429")
    }
    assert totals == {"200": 150, "429": 50}


def test_source_addresses_limited_separately(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(RATE_LIMIT="2/minute")

    first = get_many(server.port, 4, source="127.0.0.2")
    second = get_many(server.port, 3, source="127.0.0.3")

    assert [r.status for r in first] == [200, 200, 429, 429]
    assert [r.status for r in second] == [200, 200, 429]
    metrics = scrape(server.port)
    for address, rejected in (("127.0.0.2", 2), ("127.0.0.3", 1)):
        assert (
            sample(metrics, "client_requests_total", address=address, status="200") == 2
        )
        assert (
            sample(metrics, "client_requests_total", address=address, status="429")
            == rejected
        )


def test_two_servers_share_one_limit(start_gunicorn: StartGunicorn) -> None:
    first = start_gunicorn(RATE_LIMIT="3/minute", GUNICORN_WORKERS="2")
    second = start_gunicorn(RATE_LIMIT="3/minute", GUNICORN_WORKERS="2")

    responses = [request(server.port) for server in (first, second) * 4]

    assert [r.status for r in responses] == [200, 200, 200] + [429] * 5
    admitted = [
        sample(scrape(s.port), "flask_http_request_total", method="GET", status="200")
        for s in (first, second)
    ]
    assert admitted == [2, 1]


def test_rejection_is_json_with_headers(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(RATE_LIMIT="1/minute")

    assert request(server.port).status == 200
    rejected = request(server.port)

    assert rejected.status == 429
    assert rejected.headers["Content-Type"] == "application/json"
    assert rejected.json() == {
        "error": "rate limit exceeded",
        "limit": "1 per 1 minute",
    }
    assert rejected.headers["X-RateLimit-Limit"] == "1"
    assert rejected.headers["X-RateLimit-Remaining"] == "0"
    reset = int(rejected.headers["X-RateLimit-Reset"])
    assert time.time() < reset <= time.time() + 61
    assert 0 <= int(rejected.headers["Retry-After"]) <= 60


def test_metrics_and_healthz_never_limited(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(RATE_LIMIT="1/minute")
    get_many(server.port, 2)

    scrapes = [request(server.port, "/metrics") for _ in range(5)]
    checks = [request(server.port, "/healthz") for _ in range(5)]

    assert [r.status for r in scrapes] == [200] * 5
    assert [r.status for r in checks] == [200] * 5
    assert checks[0].json() == {"status": "ok", "storage": "reachable"}
    metrics = scrape(server.port)
    totals = {
        labels: value
        for (name, labels), value in metrics.items()
        if name == "flask_http_request_total"
    }
    assert totals == {
        frozenset({("method", "GET"), ("status", "200")}): 1,
        frozenset({("method", "GET"), ("status", "429")}): 1,
    }


def test_unknown_path_and_method_are_json(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(RATE_LIMIT="1/minute")

    missing = request(server.port, "/missing")
    wrong_method = request(server.port, "/", method="DELETE")

    assert missing.status == 404
    assert missing.json() == {"error": "Not Found", "status": 404}
    assert wrong_method.status == 405
    assert wrong_method.json() == {"error": "Method Not Allowed", "status": 405}
    allowed = {method.strip() for method in wrong_method.headers["Allow"].split(",")}
    assert allowed == {"GET", "HEAD", "OPTIONS"}
    assert "Traceback" not in server.log()


def test_spoofed_forwarded_for_is_ignored(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(RATE_LIMIT="2/minute")

    responses = [
        request(server.port, headers={"X-Forwarded-For": f"198.51.100.{n}"})
        for n in range(4)
    ]

    assert [r.status for r in responses] == [200, 200, 429, 429]
    metrics = scrape(server.port)
    addresses = {
        dict(labels)["address"]
        for (name, labels) in metrics
        if name == "client_requests_total"
    }
    assert addresses == {"127.0.0.1"}


def test_trusted_proxy_uses_forwarded_for(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(RATE_LIMIT="1/minute", TRUSTED_PROXY_COUNT="1")

    def get_as(client: str) -> int:
        forwarded = {"X-Forwarded-For": f"192.0.2.99, {client}"}
        return request(server.port, headers=forwarded).status

    assert [get_as("203.0.113.7"), get_as("203.0.113.7")] == [200, 429]
    assert [get_as("203.0.113.8"), get_as("203.0.113.8")] == [200, 429]
    metrics = scrape(server.port)
    for address in ("203.0.113.7", "203.0.113.8"):
        assert (
            sample(metrics, "client_requests_total", address=address, status="200") == 1
        )
        assert (
            sample(metrics, "client_requests_total", address=address, status="429") == 1
        )
    assert (
        sample(metrics, "client_requests_total", address="127.0.0.1", status="200") == 0
    )


def test_trusted_proxy_rejects_non_address(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(RATE_LIMIT="2/minute", TRUSTED_PROXY_COUNT="1")

    statuses = [
        request(server.port, headers={"X-Forwarded-For": f"not-an-ip-{n}"}).status
        for n in range(3)
    ]

    # Each bogus value falls back to the proxy's address, 127.0.0.1 here, so
    # the three requests share one limit and one label.
    assert statuses == [200, 200, 429]
    metrics = scrape(server.port)
    addresses = {
        dict(labels)["address"]
        for (name, labels) in metrics
        if name == "client_requests_total"
    }
    assert addresses == {"127.0.0.1"}


def test_moving_window_limits_exactly(
    start_gunicorn: StartGunicorn, redis_client: redis.Redis
) -> None:
    server = start_gunicorn(
        RATE_LIMIT="2/minute", RATE_LIMIT_STRATEGY="moving-window", GUNICORN_WORKERS="3"
    )

    responses = get_many(server.port, 8)

    assert [r.status for r in responses] == [200, 200] + [429] * 6
    remaining = [r.headers["X-RateLimit-Remaining"] for r in responses[:3]]
    assert remaining == ["1", "0", "0"]
    reset = int(responses[2].headers["X-RateLimit-Reset"])
    assert time.time() < reset <= time.time() + 61
    keys = redis_client.keys("LIMITS:*")
    assert keys == [b"LIMITS:LIMITER/127.0.0.1/index/2/1/minute"]
    assert redis_client.type(keys[0]) == b"list"
    assert redis_client.llen(keys[0]) == 2


def test_moving_window_slides(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(
        RATE_LIMIT="2/4second",
        RATE_LIMIT_STRATEGY="moving-window",
        GUNICORN_WORKERS="3",
    )
    started = time.monotonic()

    first = request(server.port).status
    time.sleep(2.0)
    second = [request(server.port).status for _ in range(2)]
    time.sleep(max(0.0, started + 4.2 - time.monotonic()))
    # Only the first entry has left the window, so one more is admitted. A
    # fixed window would have admitted two here.
    third = [request(server.port).status for _ in range(2)]

    assert time.monotonic() < started + 5.9, "the run was too slow to judge"
    assert first == 200
    assert second == [200, 429]
    assert third == [200, 429]


def test_several_limits_apply_together(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(RATE_LIMIT="3/minute;2/hour")

    responses = get_many(server.port, 4)

    assert [r.status for r in responses] == [200, 200, 429, 429]
    assert responses[2].json() == {
        "error": "rate limit exceeded",
        "limit": "2 per 1 hour",
    }
    # flask-limiter hits the limits in order, so the third request used up
    # the minute limit before the hour limit rejected it.
    assert responses[3].json() == {
        "error": "rate limit exceeded",
        "limit": "3 per 1 minute",
    }


def test_worked_example_server_side(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn()  # RATE_LIMIT unset: 5/10minute

    responses = get_many(server.port, 10, source="127.0.0.5")

    assert [r.status for r in responses] == [200] * 5 + [429] * 5
    assert responses[-1].json() == {
        "error": "rate limit exceeded",
        "limit": "5 per 10 minute",
    }
    metrics = scrape(server.port)
    assert (
        sample(metrics, "client_requests_total", address="127.0.0.5", status="200") == 5
    )
    assert (
        sample(metrics, "client_requests_total", address="127.0.0.5", status="429") == 5
    )


def test_metrics_dir_created_when_unset(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(RATE_LIMIT="1/minute", PROMETHEUS_MULTIPROC_DIR="")

    get_many(server.port, 3)

    metrics = scrape(server.port)
    assert sample(metrics, "flask_http_request_total", method="GET", status="200") == 1
    assert sample(metrics, "flask_http_request_total", method="GET", status="429") == 2


def test_limit_survives_script_flush(
    start_gunicorn: StartGunicorn, redis_client: redis.Redis
) -> None:
    server = start_gunicorn(RATE_LIMIT="3/minute", GUNICORN_WORKERS="1")

    first = request(server.port)
    redis_client.script_flush()
    second = request(server.port)

    assert first.status == 200
    assert second.status == 200
    assert first.headers["X-RateLimit-Remaining"] == "2"
    assert second.headers["X-RateLimit-Remaining"] == "1"
    key = b"LIMITS:LIMITER/127.0.0.1/index/3/1/minute"
    assert redis_client.get(key) == b"2"


def test_duration_histogram_by_endpoint(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(RATE_LIMIT="1/minute")

    paths = ("/", "/", "/nope", "/healthz", "/metrics")
    codes = [request(server.port, path).status for path in paths]

    assert codes == [200, 429, 404, 200, 200]
    metrics = scrape(server.port)
    name = "flask_http_request_duration_seconds_count"
    assert sample(metrics, name, method="GET", endpoint="index", status="200") == 1
    assert sample(metrics, name, method="GET", endpoint="index", status="429") == 1
    assert sample(metrics, name, method="GET", endpoint="None", status="404") == 1
    assert sample(metrics, name, method="GET", endpoint="healthz", status="200") == 0
    assert (
        sample(metrics, name, method="GET", endpoint="prometheus_metrics", status="200")
        == 0
    )
    assert sample(metrics, "flask_http_request_total", method="GET", status="404") == 1


def read_available(sock: socket.socket) -> bytes:
    """Return what ``sock`` has received so far, without waiting for more."""
    sock.setblocking(False)
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data.extend(chunk)
    except BlockingIOError:
        pass
    sock.setblocking(True)
    return bytes(data)


def test_rejected_client_does_not_hold_worker(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(
        RATE_LIMIT="1/hour", GUNICORN_WORKERS="1", GUNICORN_WORKER_CLASS="gevent"
    )
    assert request(server.port, source="127.0.0.2").status == 200
    pipelined = 300
    with socket.create_connection(
        ("127.0.0.1", server.port), timeout=10, source_address=("127.0.0.2", 0)
    ) as flooding:
        # 300 requests in one write, all over the limit, so none waits for
        # Redis and the worker finds each next one already read.
        flooding.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n" * pipelined)
        other = request(server.port, source="127.0.0.3")
        answered_before = read_available(flooding).count(b"HTTP/1.1 429 ")

    assert other.status == 200
    # Each rejected request lets the other connections run, so the other
    # client's request did not wait for all 300.
    assert answered_before < pipelined
