"""Tests of the gunicorn response that sends a whole short response in one write.

The response writes to one end of a SOCK_SEQPACKET socket pair, which keeps
the boundary of every write, so the other end receives one message per write.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from server_app.gunicorn_response import OneWriteResponse

BODY = b'{"message":"hello world!"}\n'


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client_end.settimeout(5)
    yield server_end, client_end
    server_end.close()
    client_end.close()


def respond(
    server_end: socket.socket,
    method: str,
    headers: list[tuple[str, str]],
    chunks: list[bytes],
    response_class: type[OneWriteResponse] = OneWriteResponse,
) -> None:
    """Send the response to a ``method`` request with ``headers`` and ``chunks``."""
    config = Config()
    raw = f"{method} / HTTP/1.1\r\nHost: example.test\r\n\r\n".encode("ascii")
    request = next(iter(RequestParser(config, [raw], ("127.0.0.1", 40000))))
    response = response_class(request, server_end, config)
    response.start_response("200 OK", headers)
    for chunk in chunks:
        response.write(chunk)
    response.close()


def received_messages(client_end: socket.socket) -> list[bytes]:
    """Return every message waiting at ``client_end``, one per write."""
    messages = []
    client_end.setblocking(False)
    while True:
        try:
            messages.append(client_end.recv(65536))
        except BlockingIOError:
            return messages


def test_known_length_body_is_one_write(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_end, client_end = socket_pair
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(BODY))),
        ("X-RateLimit-Remaining", "4"),
    ]
    respond(server_end, "GET", headers, [BODY])

    messages = received_messages(client_end)
    assert len(messages) == 1
    head, _, body = messages[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 27" in head
    assert b"\r\nX-RateLimit-Remaining: 4" in head
    assert b"\r\nConnection: keep-alive" in head
    assert body == BODY


def test_body_in_two_chunks_keeps_gunicorn_writes(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_end, client_end = socket_pair
    headers = [("Content-Length", str(len(BODY)))]
    respond(server_end, "GET", headers, [BODY[:10], BODY[10:]])

    messages = received_messages(client_end)
    assert len(messages) == 3
    assert messages[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert messages[0].endswith(b"\r\n\r\n")
    assert messages[1] + messages[2] == BODY


def test_unknown_length_body_stays_chunked(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_end, client_end = socket_pair
    respond(server_end, "GET", [("Content-Type", "application/json")], [BODY])

    messages = received_messages(client_end)
    assert len(messages) == 3
    assert b"\r\nTransfer-Encoding: chunked" in messages[0]
    assert messages[1] == b"%X\r\n%s\r\n" % (len(BODY), BODY)
    assert messages[2] == b"0\r\n\r\n"


def test_head_response_sends_no_body(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_end, client_end = socket_pair
    headers = [("Content-Length", str(len(BODY)))]
    respond(server_end, "HEAD", headers, [BODY])

    messages = received_messages(client_end)
    assert len(messages) == 1
    assert messages[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert messages[0].endswith(b"\r\n\r\n")
    assert b"\r\nContent-Length: 27" in messages[0]


def test_subclass_keeps_gunicorn_writes(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    # gunicorn's HTTP/2 response subclasses the installed Response.
    class FramedResponse(OneWriteResponse):
        pass

    server_end, client_end = socket_pair
    headers = [("Content-Length", str(len(BODY)))]
    respond(server_end, "GET", headers, [BODY], FramedResponse)

    messages = received_messages(client_end)
    assert len(messages) == 2
    assert messages[0].endswith(b"\r\n\r\n")
    assert messages[1] == BODY
