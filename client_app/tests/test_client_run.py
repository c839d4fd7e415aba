"""The client run against a scripted local HTTP server that records arrivals."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from client_support import (
    RATE_LIMITED_BODY,
    Reply,
    Script,
    ScriptedServer,
    run_client,
)

StartServer = Callable[[Script], ScriptedServer]

HELLO_LINE = '{"message":"hello world!"}'
FAILURE_LINE = "Failure retries limit is reached"
INCREMENTED_RETRY = "DEBUG:urllib3.util.retry:Incremented Retry for (url='/')"


def always(reply: Reply) -> Script:
    return lambda number: reply


def first_ok_then(count: int, reply: Reply) -> Script:
    return lambda number: Reply(200) if number < count else reply


def rule_wait(retry: int, backoff_factor: float, max_backoff: float = 120) -> float:
    """Return the wait before retry number `retry` (1-based) as urllib3 2.8.0
    computes it: none before the first retry, then backoff_factor * 2 **
    (retry - 1), capped at max_backoff."""
    if retry == 1:
        return 0.0
    return min(max_backoff, backoff_factor * 2 ** (retry - 1))


def lines_starting(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_three_requests_send_three_gets(scripted_server: StartServer) -> None:
    server = scripted_server(always(Reply(200)))

    result = run_client({"CLIENT_SERVER_URL": server.url, "CLIENT_TOTAL_REQUESTS": "3"})

    assert result.returncode == 0
    assert server.paths == ["/", "/", "/"]
    assert result.stdout.splitlines() == [HELLO_LINE, HELLO_LINE, HELLO_LINE]
    summaries = lines_starting(result.stderr, "INFO:client_app:Summary:")
    assert len(summaries) == 1
    assert summaries[0].startswith(
        "INFO:client_app:Summary: sent=3 ok_2xx=3 rate_limited_429=0 other=0"
        " retries=0 seconds="
    )


def test_worked_example_sequence(scripted_server: StartServer) -> None:
    rate_limited = Reply(429, RATE_LIMITED_BODY, {"Retry-After": "600"})
    server = scripted_server(first_ok_then(5, rate_limited))

    result = run_client(
        {
            "CLIENT_SERVER_URL": server.url,
            "CLIENT_TOTAL_REQUESTS": "7",
            "CLIENT_TOTAL_FAILURE_RETRIES": "4",
            "CLIENT_BACKOFF_FACTOR": "0.01",
        }
    )

    assert result.returncode == 3
    assert result.stdout.splitlines() == [HELLO_LINE] * 5 + [FAILURE_LINE]
    assert len(server.arrivals) == 10
    assert lines_starting(result.stderr, INCREMENTED_RETRY) == [
        f"{INCREMENTED_RETRY}: Retry(total={total}, connect=None, read=None,"
        " redirect=None, status=None)"
        for total in (3, 2, 1, 0)
    ]
    status_lines = [line for line in result.stderr.splitlines() if '"GET / ' in line]
    assert [line.split('" ')[1].split()[0] for line in status_lines] == (
        ["200"] * 5 + ["429"] * 5
    )
    assert (
        "INFO:client_app:Summary: sent=10 ok_2xx=5 rate_limited_429=5 other=0"
        " retries=4 seconds="
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_retried_request_then_answered(scripted_server: StartServer) -> None:
    server = scripted_server(
        lambda number: Reply(429, RATE_LIMITED_BODY) if number < 2 else Reply(200)
    )

    result = run_client(
        {
            "CLIENT_SERVER_URL": server.url,
            "CLIENT_TOTAL_REQUESTS": "2",
            "CLIENT_BACKOFF_FACTOR": "0.01",
        }
    )

    assert result.returncode == 0
    assert result.stdout.splitlines() == [HELLO_LINE, HELLO_LINE]
    assert len(server.arrivals) == 4
    assert len(lines_starting(result.stderr, INCREMENTED_RETRY)) == 2
    assert "Summary: sent=4 ok_2xx=2 rate_limited_429=2 other=0 retries=2" in (
        result.stderr
    )


def test_half_second_backoff_waits(scripted_server: StartServer) -> None:
    server = scripted_server(always(Reply(429, RATE_LIMITED_BODY)))

    result = run_client(
        {
            "CLIENT_SERVER_URL": server.url,
            "CLIENT_TOTAL_REQUESTS": "1",
            "CLIENT_TOTAL_FAILURE_RETRIES": "3",
            "CLIENT_BACKOFF_FACTOR": "0.5",
        }
    )

    assert result.returncode == 3
    assert result.stdout.splitlines() == [FAILURE_LINE]
    assert len(server.arrivals) == 4
    # Only lower bounds: a loaded machine may wait longer, never shorter.
    gaps = server.gaps()
    assert gaps[0] >= rule_wait(1, 0.5)
    assert gaps[1] >= rule_wait(2, 0.5)
    assert gaps[2] >= rule_wait(3, 0.5)
    assert rule_wait(2, 0.5) == 1.0
    assert rule_wait(3, 0.5) == 2.0


def test_retry_after_ignored_backoff_capped(scripted_server: StartServer) -> None:
    server = scripted_server(
        always(Reply(429, RATE_LIMITED_BODY, {"Retry-After": "3600"}))
    )

    # Uncapped, factor 100 would wait 200 s and then 400 s, and honouring
    # Retry-After would wait 3600 s each time. The cap of 1 s makes the run
    # take about 2 s, so the 60 s subprocess timeout in run_client fails the
    # test only if the client waited for the header or the uncapped backoff.
    result = run_client(
        {
            "CLIENT_SERVER_URL": server.url,
            "CLIENT_TOTAL_REQUESTS": "1",
            "CLIENT_TOTAL_FAILURE_RETRIES": "3",
            "CLIENT_BACKOFF_FACTOR": "100",
            "CLIENT_MAX_BACKOFF": "1",
        },
        timeout=60,
    )

    assert result.returncode == 3
    assert result.stdout.splitlines() == [FAILURE_LINE]
    assert len(server.arrivals) == 4
    gaps = server.gaps()
    assert gaps[1] >= rule_wait(2, 100, max_backoff=1)
    assert gaps[2] >= rule_wait(3, 100, max_backoff=1)
    assert rule_wait(3, 100, max_backoff=1) == 1.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_error_exits_4(scripted_server: StartServer, status: int) -> None:
    server = scripted_server(always(Reply(status, b'{"error":"failed"}\n')))

    result = run_client(
        {
            "CLIENT_SERVER_URL": server.url,
            "CLIENT_TOTAL_FAILURE_RETRIES": "2",
            "CLIENT_BACKOFF_FACTOR": "0.01",
        }
    )

    assert result.returncode == 4
    assert result.stdout == ""
    assert len(server.arrivals) == 3
    errors = lines_starting(result.stderr, "ERROR:")
    assert len(errors) == 1
    assert errors[0].startswith(
        f"ERROR:client_app:Request to {server.url} failed: the server returned"
        f" {status} "
    )
    assert errors[0].endswith(" after 2 retries")
    assert "Traceback" not in result.stderr
    assert "Summary: sent=3 ok_2xx=0 rate_limited_429=0 other=3 retries=2" in (
        result.stderr
    )


def test_not_found_exits_4_without_retry(scripted_server: StartServer) -> None:
    server = scripted_server(always(Reply(404, b'{"error":"not found"}\n')))

    result = run_client({"CLIENT_SERVER_URL": server.url, "CLIENT_BACKOFF_FACTOR": "0"})

    assert result.returncode == 4
    assert len(server.arrivals) == 1
    assert lines_starting(result.stderr, "ERROR:") == [
        f"ERROR:client_app:Request to {server.url} failed: the server returned"
        " 404 Not Found after 0 retries"
    ]


def test_connection_refused_exits_4(closed_port_url: str) -> None:
    result = run_client(
        {
            "CLIENT_SERVER_URL": closed_port_url,
            "CLIENT_TOTAL_FAILURE_RETRIES": "2",
            "CLIENT_BACKOFF_FACTOR": "0.01",
        }
    )

    assert result.returncode == 4
    assert result.stdout == ""
    errors = lines_starting(result.stderr, "ERROR:")
    assert len(errors) == 1
    assert errors[0].startswith(
        f"ERROR:client_app:Request to {closed_port_url} failed:"
    )
    assert "Connection refused" in errors[0]
    assert errors[0].endswith("(after 2 retries)")
    assert "Traceback" not in result.stderr
    assert "Summary: sent=3 ok_2xx=0 rate_limited_429=0 other=0 retries=2" in (
        result.stderr
    )


def test_read_timeout_exits_4(scripted_server: StartServer) -> None:
    server = scripted_server(always(Reply(200, delay=1.0)))

    result = run_client(
        {
            "CLIENT_SERVER_URL": server.url,
            "CLIENT_TOTAL_FAILURE_RETRIES": "1",
            "CLIENT_BACKOFF_FACTOR": "0",
            "CLIENT_READ_TIMEOUT": "0.2",
        }
    )

    assert result.returncode == 4
    assert result.stdout == ""
    assert len(server.arrivals) == 2
    errors = lines_starting(result.stderr, "ERROR:")
    assert len(errors) == 1
    assert "Read timed out" in errors[0]
    assert "Traceback" not in result.stderr


def test_console_script_sends_requests(scripted_server: StartServer) -> None:
    server = scripted_server(always(Reply(200)))

    result = run_client(
        {"CLIENT_SERVER_URL": server.url, "CLIENT_TOTAL_REQUESTS": "2"},
        console_script=True,
    )

    assert result.returncode == 0
    assert result.stdout.splitlines() == [HELLO_LINE, HELLO_LINE]
    assert len(server.arrivals) == 2
    port = server.url.rsplit(":", 1)[1].rstrip("/")
    assert (
        "DEBUG:urllib3.connectionpool:Starting new HTTP connection (1):"
        f" 127.0.0.1:{port}"
    ) in result.stderr.splitlines()
    assert (
        f'DEBUG:urllib3.connectionpool:http://127.0.0.1:{port} "GET / HTTP/1.1" 200 27'
        in result.stderr.splitlines()
    )


def test_log_level_info_hides_debug(scripted_server: StartServer) -> None:
    server = scripted_server(always(Reply(200)))

    result = run_client(
        {
            "CLIENT_SERVER_URL": server.url,
            "CLIENT_TOTAL_REQUESTS": "1",
            "CLIENT_LOG_LEVEL": "INFO",
        }
    )

    assert result.returncode == 0
    assert result.stdout.splitlines() == [HELLO_LINE]
    assert "DEBUG:" not in result.stderr
    assert len(lines_starting(result.stderr, "INFO:client_app:Summary:")) == 1


def test_failure_line_masks_password(closed_port_url: str) -> None:
    url_with_password = closed_port_url.replace("http://", "http://user:secret@")

    result = run_client(
        {
            "CLIENT_SERVER_URL": url_with_password,
            "CLIENT_TOTAL_FAILURE_RETRIES": "0",
        }
    )

    assert result.returncode == 4
    assert "secret" not in result.stderr
    masked_url = closed_port_url.replace("http://", "http://user:***@")
    errors = lines_starting(result.stderr, "ERROR:")
    assert len(errors) == 1
    assert errors[0].startswith(f"ERROR:client_app:Request to {masked_url} failed:")
