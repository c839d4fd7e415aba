"""Bad settings and bad requests: a clear error naming the value, never a crash.

Each test records what it measured with record_property("bad_input", ...), and
conftest.py in this folder turns those records into docs/bad-inputs.md when
BAD_INPUT_TABLE names the output file.
"""

from __future__ import annotations

import html
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from live_server import StartServer, client_request_counts

from bench.processes import GunicornServer, RedisServer, free_port, run_gunicorn

RecordProperty = Callable[[str, object], None]

# Server settings: gunicorn must exit 1 before any worker boots, with one line
# naming the variable and the value.
SERVER_SETTINGS = [
    ("RATE_LIMIT", "abc"),
    ("RATE_LIMIT", "5"),
    ("RATE_LIMIT", ""),
    ("RATE_LIMIT", "5/10min"),
    ("RATE_LIMIT", "5/0minute"),
    ("RATE_LIMIT", "0/minute"),
    ("RATE_LIMIT", "-1/minute"),
    ("RATE_LIMIT", "5/fortnight"),
    ("RATE_LIMIT_STRATEGY", "sliding-window"),
    ("RATE_LIMIT_ON_STORAGE_ERROR", "ignore"),
    ("REDIS_URL", "http://localhost:6379/0"),
    ("TRUSTED_PROXY_COUNT", "-1"),
    ("TRUSTED_PROXY_COUNT", "two"),
    ("GUNICORN_WORKERS", "0"),
    ("GUNICORN_WORKER_CLASS", "eventlet"),
    ("GUNICORN_THREADS", "lots"),
    ("GUNICORN_REUSE_PORT", "sometimes"),
]

# Client settings: the client must exit 2 with one ERROR line naming the
# variable and the value, before it sends any request.
CLIENT_SETTINGS = [
    ("CLIENT_TOTAL_REQUESTS", "abc"),
    ("CLIENT_TOTAL_REQUESTS", "-1"),
    ("CLIENT_TOTAL_FAILURE_RETRIES", "many"),
    ("CLIENT_BACKOFF_FACTOR", "fast"),
    ("CLIENT_BACKOFF_FACTOR", "-1"),
    ("CLIENT_SERVER_URL", "ftp://localhost/"),
    ("CLIENT_SERVER_URL", "localhost:80"),
]

# Raw requests, with the status expected and whether Flask or gunicorn's HTTP
# parser responds to them. Both respond with JSON.
REQUESTS = [
    (
        "request line of 5000 bytes",
        b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
        "gunicorn",
    ),
    (
        "header field of 9000 bytes",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        431,
        "gunicorn",
    ),
    (
        "101 header fields",
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: 1\r\n" % i for i in range(101))
        + b"\r\n",
        431,
        "gunicorn",
    ),
    ("request line without method", b"GARBAGE\r\n\r\n", 400, "gunicorn"),
    ("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400, "gunicorn"),
    (
        "Content-Length: abc",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        400,
        "gunicorn",
    ),
    ("unknown method BREW /", b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "flask"),
    (
        "POST /",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        405,
        "flask",
    ),
    ("DELETE /metrics", b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405, "flask"),
    ("GET /nope", b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, "flask"),
    (
        "GET /../../etc/passwd",
        b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        404,
        "flask",
    ),
]


def record(
    record_property: RecordProperty, group: str, case: str, expected: str, seen: str
) -> None:
    record_property(
        "bad_input",
        {"group": group, "input": case, "expected": expected, "observed": seen},
    )


@pytest.mark.parametrize(("name", "value"), SERVER_SETTINGS)
def test_server_rejects_setting(
    tmp_path: Path, record_property: RecordProperty, name: str, value: str
) -> None:
    # The Redis URL is closed: no valid setting needs Redis.
    completed = run_gunicorn(tmp_path, {name: value})

    output = completed.stdout + completed.stderr
    lines = [line for line in output.splitlines() if f"invalid {name}=" in line]
    record(
        record_property,
        "server setting",
        f"`{name}={value}`",
        "exit 1, one line naming it",
        f"exit {completed.returncode}: `{lines[0] if lines else output.strip()}`",
    )
    assert completed.returncode == 1, output
    assert len(lines) == 1, output
    assert repr(value) in lines[0]
    assert "expected" in lines[0]
    assert "Booting worker" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize(("name", "value"), CLIENT_SETTINGS)
def test_client_rejects_setting(
    record_property: RecordProperty, name: str, value: str
) -> None:
    env = {
        key: item for key, item in os.environ.items() if not key.startswith("CLIENT_")
    }
    # A server URL nothing listens on, so a client that ignored the bad value
    # and sent a request would exit 4, not 2.
    env["CLIENT_SERVER_URL"] = f"http://127.0.0.1:{free_port()}/"
    env[name] = value

    completed = subprocess.run(
        [sys.executable, "-m", "client_app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    lines = completed.stderr.splitlines()
    record(
        record_property,
        "client setting",
        f"`{name}={value}`",
        "exit 2, one line naming it",
        f"exit {completed.returncode}: `{lines[0] if lines else ''}`",
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stdout == ""
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith(f"ERROR:client_app:Invalid {name}={value!r}")
    assert "expected" in lines[0]


@pytest.fixture(scope="module")
def request_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GunicornServer]:
    """Start one Redis and one server (one worker) for all raw-request cases."""
    workdir = tmp_path_factory.mktemp("bad-requests")
    redis_server = RedisServer(workdir / "redis")
    redis_server.start()
    server = GunicornServer(
        workdir / "server_app",
        {
            "RATE_LIMIT": "1000/minute",
            "REDIS_URL": redis_server.url(),
            "GUNICORN_WORKERS": "1",
        },
    )
    server.start()
    yield server
    server.stop()
    redis_server.stop()


def body_text(body: bytes) -> str:
    """Return the body with HTML tags removed and whitespace collapsed."""
    text = re.sub(r"<[^>]+>", " ", body.decode(errors="replace"))
    return html.unescape(" ".join(text.split()))


def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the response until the server closes, parse it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("case", "data", "status", "responder"), REQUESTS, ids=[r[0] for r in REQUESTS]
)
def test_server_answers_bad_request(
    request_server: GunicornServer,
    record_property: RecordProperty,
    case: str,
    data: bytes,
    status: int,
    responder: str,
) -> None:
    seen_status, headers, body = exchange(request_server.port, data)

    content_type = headers.get("content-type", "")
    record(
        record_property,
        "HTTP request",
        case,
        f"{status} from {responder}",
        f"{seen_status} {content_type}: `{body_text(body)[:120]}`",
    )
    assert seen_status == status
    assert content_type == "application/json"
    assert json.loads(body)["status"] == status
    if responder == "gunicorn":
        # gunicorn's parser rejects these before Flask runs, and its message
        # names the rejected part of the request.
        assert json.loads(body)["message"]
    # The worker that sent this response still serves the next request.
    next_status, _, next_body = exchange(
        request_server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert next_status == 200
    assert json.loads(next_body) == {"message": "hello world!"}
    assert "Traceback" not in request_server.process.output()


def test_spoofed_forwarded_for_ignored(
    redis_server: RedisServer,
    start_server: StartServer,
    record_property: RecordProperty,
) -> None:
    server = start_server({"RATE_LIMIT": "2/minute", "REDIS_URL": redis_server.url()})
    statuses = []
    for index in range(3):
        request = (
            f"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.{index}\r\n"
            "Connection: close\r\n\r\n"
        )
        statuses.append(exchange(server.port, request.encode())[0])

    counts = client_request_counts(server.base_url)
    record(
        record_property,
        "HTTP request",
        "3 GETs, each with another X-Forwarded-For, limit 2/minute",
        "200, 200, 429, all counted for 127.0.0.1",
        f"{statuses}, metrics {sorted(counts.items())}",
    )
    assert statuses == [200, 200, 429]
    assert counts == {("127.0.0.1", "200"): 2.0, ("127.0.0.1", "429"): 1.0}
