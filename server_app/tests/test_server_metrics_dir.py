"""The temporary metrics directory that gunicorn_conf creates without
PROMETHEUS_MULTIPROC_DIR, with real gunicorn masters and workers."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from server_support import (
    Gunicorn,
    free_port,
    request,
    run_gunicorn,
    sample,
    scrape,
    wait_until,
)

from bench.processes import port_accepts

StartGunicorn = Callable[..., Gunicorn]


def metrics_dirs(temp_dir: Path) -> list[Path]:
    return sorted(temp_dir.glob("server_app-metrics-*"))


def test_dir_removed_after_bind_failure(tmp_path: Path) -> None:
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    port = free_port()

    # Without per-worker sockets the master binds the port itself and, after
    # gunicorn's 5 tries, exits without calling on_exit.
    with socket.create_server(("127.0.0.1", port)):
        result = run_gunicorn(
            tmp_path,
            GUNICORN_BIND=f"127.0.0.1:{port}",
            GUNICORN_REUSE_PORT="false",
            PROMETHEUS_MULTIPROC_DIR="",
            TMPDIR=str(temp_dir),
        )

    assert result.returncode == 1
    assert "Can't connect to" in result.stderr
    assert metrics_dirs(temp_dir) == []


def test_dir_kept_while_worker_exits(
    start_gunicorn: StartGunicorn, tmp_path: Path
) -> None:
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    server = start_gunicorn(
        GUNICORN_WORKERS="1", PROMETHEUS_MULTIPROC_DIR="", TMPDIR=str(temp_dir)
    )
    (metrics_dir,) = metrics_dirs(temp_dir)
    (worker,) = server.wait_for_workers(1)
    assert request(server.port).status == 200

    # The worker runs the exit handlers it inherited from the master.
    os.kill(worker, signal.SIGTERM)
    wait_until(
        lambda: server.worker_pids() not in ([], [worker]),
        20,
        "gunicorn replaced its worker after SIGTERM",
    )
    assert request(server.port).status == 200

    assert metrics_dir.is_dir()
    metrics = scrape(server.port)
    assert sample(metrics, "flask_http_request_total", method="GET", status="200") == 2

    server.stop()
    assert metrics_dirs(temp_dir) == []


def test_dir_removed_by_daemon_master(tmp_path: Path) -> None:
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    pid_file = tmp_path / "gunicorn.pid"
    port = free_port()

    # --daemon forks the master again after gunicorn_conf has run.
    result = run_gunicorn(
        tmp_path,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS="1",
        GUNICORN_CMD_ARGS=f"--daemon --pid {pid_file}",
        PROMETHEUS_MULTIPROC_DIR="",
        TMPDIR=str(temp_dir),
    )
    assert result.returncode == 0, result.stderr
    wait_until(pid_file.exists, 20, "the daemon wrote its PID file")
    master = int(pid_file.read_text())
    wait_until(
        lambda: port_accepts("127.0.0.1", port), 20, f"the daemon listens on {port}"
    )
    assert request(port).status == 200
    assert len(metrics_dirs(temp_dir)) == 1

    os.kill(master, signal.SIGTERM)
    wait_until(lambda: not process_exists(master), 30, "the daemon master exited")

    assert metrics_dirs(temp_dir) == []


def process_exists(pid: int) -> bool:
    """Return whether ``pid`` runs, counting a zombie as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
