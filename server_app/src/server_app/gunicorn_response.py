"""Changes to how gunicorn writes responses, installed by ``gunicorn_conf``.

NOTE: these replace three names inside gunicorn 27, ``gunicorn.util.write_error``,
``gunicorn.util.http_date`` and ``gunicorn.http.wsgi.Response``, so check them
on every upgrade. The replacements go in before the master forks, so every
worker inherits them.
"""

from __future__ import annotations

import json
import socket
import time

from gunicorn import util
from gunicorn.http import wsgi

_format_http_date = util.http_date

# The second and the Date header value of the latest response.
_latest_date: tuple[int, str] = (-1, "")


def write_json_error(
    sock: socket.socket, status_int: int, reason: str, mesg: str
) -> None:
    """Write gunicorn's own error responses, such as 400, 414 and 431, as JSON.

    gunicorn rejects a request that its HTTP parser cannot accept before the
    app runs, with an HTML page. Every other error of the service is JSON, so
    these carry the same ``error`` and ``status`` keys plus gunicorn's message,
    which names the value it rejected.
    """
    body = {"error": reason, "status": status_int, "message": mesg}
    data = (json.dumps(body, separators=(",", ":")) + "\n").encode("ascii")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + data)


class OneWriteResponse(wsgi.Response):  # type: ignore[misc]
    """A gunicorn response that sends the head and a whole body in one write.

    gunicorn sends the status line and headers, then each body chunk, with a
    separate ``sendall``. Every response of this service is a short body
    whose Content-Length is known, so one write saves a system call, and a
    packet and a wake-up of the client, per response. Streamed, chunked and
    bodiless responses keep gunicorn's own path.
    """

    # The attributes of gunicorn's Response that write() uses.
    sock: socket.socket
    headers: list[tuple[str, str]]
    headers_sent: bool
    chunked: bool
    _omits_body: bool
    response_length: int | None
    sent: int

    def write(self, arg: bytes) -> None:
        # gunicorn's HTTP/2 response subclasses the Response it finds at
        # import, which can be this class, and frames its head differently.
        if (
            type(self) is not OneWriteResponse
            or self.headers_sent
            or self.chunked
            or self._omits_body
            or not isinstance(arg, bytes)
            or self.response_length != len(arg)
        ):
            super().write(arg)
            return
        # The same head that gunicorn's send_headers builds.
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        head = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True
        self.sent = len(arg)
        send_all(self.sock, head + arg)


def send_all(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` with one ``send`` call when the socket takes all of it.

    gevent's ``sendall`` reads the socket's buffer size with getsockopt
    before every write, a system call that a short response does not need.
    ``sendall`` sends what a partial send left.
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def http_date(timestamp: float | None = None) -> str:
    """Return the Date header value of gunicorn's responses, formatted once a second.

    The header has a resolution of one second, and formatting it took about
    2% of a gevent worker's samples in a py-spy profile under load.
    """
    global _latest_date
    if timestamp is not None:
        return str(_format_http_date(timestamp))
    second = int(time.time())
    latest = _latest_date
    if latest[0] != second:
        latest = (second, str(_format_http_date(second)))
        _latest_date = latest
    return latest[1]


def install() -> None:
    """Put the JSON error writer, the cached Date and the one-write response
    into gunicorn."""
    util.write_error = write_json_error
    util.http_date = http_date
    wsgi.Response = OneWriteResponse
