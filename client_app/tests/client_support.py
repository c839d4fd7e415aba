"""Helpers that run the real client as a subprocess and serve scripted replies."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

HELLO_BODY = b'{"message":"hello world!"}\n'
RATE_LIMITED_BODY = b'{"error":"rate limit exceeded: 5 per 10 minute"}\n'

PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy"})

# Console script installed next to the interpreter that runs pytest.
CONSOLE_SCRIPT = Path(sys.executable).parent / "ratelimit-client"


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP response."""

    status: int
    body: bytes = HELLO_BODY
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


# Maps the 0-based number of a request the server received to its reply.
Script = Callable[[int], Reply]


@dataclass
class ScriptedServer:
    """A real HTTP server on a free loopback port that replies from a script
    and records when each request arrived."""

    script: Script
    arrivals: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gaps(self) -> list[float]:
        """Return the seconds between consecutive request arrivals."""
        return [later - earlier for earlier, later in itertools.pairwise(self.arrivals)]


def handler_class(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with server.lock:
                number = len(server.arrivals)
                server.arrivals.append(time.monotonic())
                server.paths.append(self.path)
            reply = server.script(number)
            if reply.delay:
                time.sleep(reply.delay)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up on a delayed reply (read timeout).
                pass

        def log_message(self, format: str, *args: object) -> None:
            # The arrivals list is the record, so the request log stays quiet.
            pass

    return Handler


def run_client(
    settings: dict[str, str],
    *,
    console_script: bool = False,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the client with the given CLIENT_* settings and capture its output.

    The environment is the test's own minus every inherited CLIENT_* variable,
    so only the given settings apply, and minus proxy variables, so requests
    to loopback addresses go straight to the test's servers.
    """
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CLIENT_") and name.lower() not in PROXY_VARIABLES
    }
    environ.update(settings)
    if console_script:
        command = [str(CONSOLE_SCRIPT)]
    else:
        command = [sys.executable, "-m", "client_app"]
    return subprocess.run(
        command,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
