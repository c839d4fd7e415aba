"""Changes to how gunicorn writes responses, installed by ``gunicorn_conf``.

NOTE: these replace two names inside gunicorn 27, ``gunicorn.util.write_error``
and ``gunicorn.http.wsgi.Response``, so check both on every upgrade. The
replacements go in before the master forks, so every worker inherits them.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util
from gunicorn.http import wsgi


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
        util.write(self.sock, head + arg)


def install() -> None:
    """Put the JSON error writer and the one-write response into gunicorn."""
    util.write_error = write_json_error
    wsgi.Response = OneWriteResponse
