"""The servers the benchmark compares, each started on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from bench.processes import (
    GunicornServer,
    ManagedProcess,
    NginxServer,
    RedisServer,
    bare_gunicorn_argv,
    free_port,
)
from server_app.config import WorkerClass, parse_reuse_port

HELLO_JSON = '{"message":"hello world!"}'

# A limit that no run reaches, and one that only the first request fits.
LIMIT_NEVER_REACHED = "1000000000/minute"
LIMIT_ALWAYS_EXCEEDED = "1/hour"


class Server(Protocol):
    port: int
    process: ManagedProcess

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class WorkerSetup:
    """A gunicorn worker class with its worker and thread counts."""

    worker_class: str
    workers: int
    threads: int = 1

    @classmethod
    def parse(cls, text: str) -> WorkerSetup:
        """Parse CLASS:WORKERS[:THREADS], e.g. `sync:4` or `gthread:2:4`."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(
                f"invalid worker setup {text!r}: expected CLASS:WORKERS[:THREADS], "
                "e.g. sync:4 or gthread:2:4"
            )
        threads = int(parts[2]) if len(parts) == 3 else 1
        return cls(parts[0], int(parts[1]), threads)

    @property
    def label(self) -> str:
        if self.threads > 1:
            return f"{self.worker_class} {self.workers}x{self.threads}"
        return f"{self.worker_class} {self.workers}"


@dataclass
class BenchTarget:
    """A named server under test and the setup it is compared within."""

    name: str
    server: Server
    setup: WorkerSetup | None = None
    limit: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/"


def _limited_location(zone: str, burst: str) -> str:
    # `return` runs in the rewrite phase, before limit_req, so the limited
    # servers reach the same `return 200` through try_files.
    return (
        "location / {\n"
        f"    limit_req zone={zone}{burst};\n"
        "    limit_req_status 429;\n"
        "    try_files /nonexistent @hello;\n"
        "}\n"
        "location @hello {\n"
        "    default_type application/json;\n"
        f"    return 200 '{HELLO_JSON}';\n"
        "}\n"
        "error_page 429 @limited;\n"
        "location @limited {\n"
        "    default_type application/json;\n"
        """    return 429 '{"error":"rate limit exceeded"}';\n"""
        "}"
    )


def nginx_targets(workdir: Path) -> list[BenchTarget]:
    """Return nginx plain, with a limit it never hits, and with one it always hits."""
    plain = (
        "location / {\n"
        "    default_type application/json;\n"
        f"    return 200 '{HELLO_JSON}';\n"
        "}"
    )
    open_zone = "limit_req_zone $binary_remote_addr zone=open:1m rate=1000000r/s;"
    closed_zone = "limit_req_zone $binary_remote_addr zone=closed:1m rate=1r/m;"
    return [
        BenchTarget("nginx return 200", NginxServer(workdir / "nginx-plain", plain)),
        BenchTarget(
            "nginx limit_req, under limit",
            NginxServer(
                workdir / "nginx-open",
                _limited_location("open", " burst=1000000 nodelay"),
                open_zone,
            ),
        ),
        BenchTarget(
            "nginx limit_req, over limit",
            NginxServer(
                workdir / "nginx-closed",
                _limited_location("closed", ""),
                closed_zone,
            ),
        ),
    ]


def gunicorn_targets(
    workdir: Path, redis_server: RedisServer, setup: WorkerSetup, first_db: int
) -> list[BenchTarget]:
    """Return bare gunicorn + Flask and our server under and over its limit."""
    setup_env = {
        "GUNICORN_WORKERS": str(setup.workers),
        "GUNICORN_WORKER_CLASS": setup.worker_class,
        "GUNICORN_THREADS": str(setup.threads),
    }
    slug = f"{setup.worker_class}-{setup.workers}-{setup.threads}"
    port = free_port()
    # Bare gunicorn listens the way our server does with its default
    # GUNICORN_REUSE_PORT, so the two differ only in the application.
    reuse_port = parse_reuse_port(
        "auto",
        cast(WorkerClass, setup.worker_class),
        setup.threads,
        f"127.0.0.1:{port}",
    )
    bare = GunicornServer(
        workdir / f"bare-{slug}",
        {},
        bare_gunicorn_argv(
            port, setup.workers, setup.worker_class, setup.threads, reuse_port
        ),
        name="bare-gunicorn",
        port=port,
    )
    targets = [BenchTarget(f"bare gunicorn, {setup.label}", bare, setup)]
    for offset, (limit, case) in enumerate(
        [(LIMIT_NEVER_REACHED, "under limit"), (LIMIT_ALWAYS_EXCEEDED, "over limit")]
    ):
        ours = GunicornServer(
            workdir / f"ours-{slug}-{offset}",
            {
                **setup_env,
                "RATE_LIMIT": limit,
                "REDIS_URL": redis_server.url(first_db + offset),
            },
            name="server_app",
        )
        targets.append(BenchTarget(f"ours {case}, {setup.label}", ours, setup, limit))
    return targets
