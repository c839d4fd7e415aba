"""Tests of the gunicorn response that sends a whole short response in one write.

The response writes to one end of a SOCK_SEQPACKET socket pair, which keeps
the boundary of every write, so the other end receives one message per write.
"""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from server_app.gunicorn_response import OneWriteResponse, http_date, send_all

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


def stream_pair() -> tuple[socket.socket, socket.socket]:
    """Return a stream socket pair whose sending end has a timeout, as
    gevent's and gthread's client sockets do, and a 64 KiB send buffer."""
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sender.settimeout(10)
    return sender, receiver


def test_send_all_finishes_partial_send() -> None:
    data = bytes(range(256)) * 16384
    probe_sender, probe_receiver = stream_pair()
    with probe_sender, probe_receiver:
        # One send() on such a socket takes only part of 4 MiB.
        assert 0 < probe_sender.send(data) < len(data)
    sender, receiver = stream_pair()
    received = bytearray()

    def receive() -> None:
        while len(received) < len(data):
            chunk = receiver.recv(1 << 20)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=receive)
    reader.start()
    try:
        send_all(sender, data)
    finally:
        reader.join(timeout=10)
        sender.close()
        receiver.close()

    assert bytes(received) == data


def test_http_date_formats_current_second() -> None:
    for _ in range(3):
        second = int(time.time())
        value = http_date()
        if int(time.time()) == second:
            break

    assert value == email.utils.formatdate(second, usegmt=True)
    assert http_date() is http_date() or int(time.time()) != second


def test_http_date_formats_given_timestamp() -> None:
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(1700000000.9) == "Tue, 14 Nov 2023 22:13:20 GMT"
