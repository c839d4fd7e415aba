"""Fixtures that start local servers for the client tests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer

import pytest
from client_support import Script, ScriptedServer, handler_class


@pytest.fixture
def scripted_server() -> Iterator[Callable[[Script], ScriptedServer]]:
    """Start scripted servers on free loopback ports and stop them afterwards."""
    started: list[ThreadingHTTPServer] = []

    def start(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        http_server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class(server))
        http_server.daemon_threads = True
        port = http_server.server_address[1]
        server.url = f"http://127.0.0.1:{port}/"
        threading.Thread(target=http_server.serve_forever, daemon=True).start()
        started.append(http_server)
        return server

    yield start

    for http_server in started:
        http_server.shutdown()
        http_server.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """Return a loopback URL on a port that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
