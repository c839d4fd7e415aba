"""The client against the real service: gunicorn serving server_app, with its
counters in a real redis-server."""

from __future__ import annotations

from collections.abc import Callable

from client_live_service import RedisServer, Service
from client_support import run_client

StartService = Callable[..., Service]

HELLO_LINE = '{"message":"hello world!"}'
FAILURE_LINE = "Failure retries limit is reached"
INCREMENTED_RETRY = "DEBUG:urllib3.util.retry:Incremented Retry for (url='/')"


def sample(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def lines_starting(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_worked_example_end_to_end(live_service: StartService) -> None:
    service = live_service("5/10minute")

    # With 4 retries and backoff factor 1, the retries wait 0, 2, 4 and 8 s.
    result = run_client(
        {
            "CLIENT_SERVER_URL": service.url,
            "CLIENT_TOTAL_REQUESTS": "7",
            "CLIENT_TOTAL_FAILURE_RETRIES": "4",
            "CLIENT_BACKOFF_FACTOR": "1",
        }
    )

    assert result.returncode == 3
    assert result.stdout.splitlines() == [HELLO_LINE] * 5 + [FAILURE_LINE]
    assert lines_starting(result.stderr, INCREMENTED_RETRY) == [
        f"{INCREMENTED_RETRY}: Retry(total={total}, connect=None, read=None,"
        " redirect=None, status=None)"
        for total in (3, 2, 1, 0)
    ]
    summary = lines_starting(result.stderr, "INFO:client_app:Summary:")
    assert len(summary) == 1
    assert summary[0].startswith(
        "INFO:client_app:Summary: sent=10 ok_2xx=5 rate_limited_429=5 other=0"
        " retries=4 seconds="
    )
    # Lower bound only: the backoff waits add up to 0 + 2 + 4 + 8 seconds.
    assert float(summary[0].rsplit("seconds=", 1)[1]) >= 14.0

    metrics = service.metrics()
    assert metrics[sample("flask_http_request_total", method="GET", status="200")] == 5
    assert metrics[sample("flask_http_request_total", method="GET", status="429")] == 5
    assert (
        metrics[sample("client_requests_total", address="127.0.0.1", status="200")] == 5
    )
    assert (
        metrics[sample("client_requests_total", address="127.0.0.1", status="429")] == 5
    )

    # The server sends a Retry-After of minutes, which the client ignored, since
    # the whole run took about the 14 s of backoff.
    status, headers = service.get("")
    assert status == 429
    assert int(headers["Retry-After"]) > 60


def test_three_requests_three_gets(live_service: StartService) -> None:
    service = live_service("100/minute")

    result = run_client(
        {
            "CLIENT_SERVER_URL": service.url,
            "CLIENT_TOTAL_REQUESTS": "3",
            "CLIENT_BACKOFF_FACTOR": "0.5",
        }
    )

    assert result.returncode == 0
    assert result.stdout.splitlines() == [HELLO_LINE] * 3
    metrics = service.metrics()
    assert metrics[sample("flask_http_request_total", method="GET", status="200")] == 3
    assert sample("flask_http_request_total", method="GET", status="429") not in (
        metrics
    )
    assert (
        metrics[sample("client_requests_total", address="127.0.0.1", status="200")] == 3
    )


def test_half_second_backoff_end_to_end(live_service: StartService) -> None:
    service = live_service("2/minute")

    result = run_client(
        {
            "CLIENT_SERVER_URL": service.url,
            "CLIENT_TOTAL_REQUESTS": "3",
            "CLIENT_TOTAL_FAILURE_RETRIES": "2",
            "CLIENT_BACKOFF_FACTOR": "0.5",
        }
    )

    assert result.returncode == 3
    assert result.stdout.splitlines() == [HELLO_LINE] * 2 + [FAILURE_LINE]
    summary = lines_starting(result.stderr, "INFO:client_app:Summary:")
    assert len(summary) == 1
    # Lower bound only: the two retries wait 0 and then 0.5 * 2 seconds.
    assert float(summary[0].rsplit("seconds=", 1)[1]) >= 1.0
    metrics = service.metrics()
    assert metrics[sample("flask_http_request_total", method="GET", status="200")] == 2
    assert metrics[sample("flask_http_request_total", method="GET", status="429")] == 3


def test_storage_reject_policy_exits_4(
    live_service: StartService, redis_server: RedisServer
) -> None:
    service = live_service("100/minute", RATE_LIMIT_ON_STORAGE_ERROR="reject")
    redis_server.stop()

    result = run_client(
        {
            "CLIENT_SERVER_URL": service.url,
            "CLIENT_TOTAL_FAILURE_RETRIES": "1",
            "CLIENT_BACKOFF_FACTOR": "0",
        }
    )

    assert result.returncode == 4
    assert result.stdout == ""
    assert lines_starting(result.stderr, "ERROR:") == [
        f"ERROR:client_app:Request to {service.url} failed: the server returned"
        " 503 SERVICE UNAVAILABLE after 1 retries"
    ]
    assert "Traceback" not in result.stderr


def test_stopped_service_exits_4(live_service: StartService) -> None:
    service = live_service("100/minute")
    service.stop()

    result = run_client(
        {
            "CLIENT_SERVER_URL": service.url,
            "CLIENT_TOTAL_FAILURE_RETRIES": "1",
            "CLIENT_BACKOFF_FACTOR": "0",
        }
    )

    assert result.returncode == 4
    assert result.stdout == ""
    errors = lines_starting(result.stderr, "ERROR:")
    assert len(errors) == 1
    assert "Connection refused" in errors[0]
    assert "Traceback" not in result.stderr
