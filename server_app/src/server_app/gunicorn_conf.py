"""gunicorn settings for the service, taken from ``GUNICORN_*`` variables.

Run it as ``gunicorn -c python:server_app.gunicorn_conf server_app.wsgi:app``.
The module validates every setting of gunicorn and of the application when
gunicorn loads it, so an invalid value stops the master with one line on
stderr and exit status 1 before any worker starts. It also prepares the
Prometheus multiprocess directory that the workers share.
"""

from __future__ import annotations

import atexit
import errno
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

from server_app import gunicorn_response, gunicorn_worker
from server_app.config import AppSettings, ConfigError, GunicornSettings


def _load_settings() -> tuple[GunicornSettings, AppSettings]:
    try:
        return GunicornSettings.from_env(), AppSettings.from_env()
    except ConfigError as error:
        raise SystemExit(f"server_app: {error}") from None


class _TemporaryDir:
    """A directory that the master removes when it exits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # gunicorn's --daemon forks the master once more after this module
        # runs, so on_starting sets the ID again.
        self.master_pid = os.getpid()
        atexit.register(self.remove)

    def remove(self) -> None:
        """Remove the directory unless this process is a worker, which
        inherits the exit handlers of the master that forked it."""
        if os.getpid() == self.master_pid:
            shutil.rmtree(self.path, ignore_errors=True)


def _prepare_metrics_dir() -> tuple[Path, _TemporaryDir | None]:
    """Return the multiprocess directory, created if needed, and its removal
    on exit if this module created it.

    Without PROMETHEUS_MULTIPROC_DIR the master creates a private temporary
    directory and exports its path, so the workers it forks inherit it. The
    master removes it when it exits, also when gunicorn itself exits on an
    error without calling on_exit, such as an address it cannot bind.
    """
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not configured:
        path = Path(tempfile.mkdtemp(prefix="server_app-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
        return path, _TemporaryDir(path)
    path = Path(configured)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(
            f"server_app: invalid PROMETHEUS_MULTIPROC_DIR={configured!r}: "
            f"expected a writable directory such as '/run/server_app/metrics' "
            f"({error.strerror})"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SystemExit(
            f"server_app: invalid PROMETHEUS_MULTIPROC_DIR={configured!r}: "
            "expected a directory writable by this user"
        )
    return path, None


gunicorn_response.install()

_server, _app = _load_settings()
_metrics_dir, _temporary_metrics_dir = _prepare_metrics_dir()

bind = [_server.bind]
workers = _server.workers
worker_class = _server.worker_class
threads = _server.threads
# Each worker listens on a socket of its own (see config.parse_reuse_port).
reuse_port = _server.reuse_port

# Logs go to stderr and the access log, when enabled, to stdout, so systemd's
# journal or the container runtime collects both.
errorlog = "-"
accesslog = "-" if _server.access_log else None
loglevel = _app.log_level.lower()

# gunicorn 25.1 and later would create a control socket under $HOME or
# $XDG_RUNTIME_DIR, but the service needs neither a writable home nor that
# socket.
control_socket_disable = True
# The worker heartbeat files go to memory when /dev/shm is available, so a
# slow disk cannot make the master kill busy workers.
if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
    worker_tmp_dir = "/dev/shm"


def on_starting(server: Any) -> None:
    """Check the listening addresses and empty the metrics directory, so that
    counters start from zero."""
    if _temporary_metrics_dir is not None:
        _temporary_metrics_dir.master_pid = os.getpid()
    # The gunicorn settings that apply, which GUNICORN_CMD_ARGS may change.
    config = server.cfg
    if config.preload_app and "gevent" in config.worker_class_str:
        raise SystemExit(
            "server_app: --preload does not work with the gevent worker: the "
            "master would create the app, and its Redis connection and "
            "thread-local state, before the workers patch Python for gevent. "
            "Remove --preload from GUNICORN_CMD_ARGS"
        )
    if config.reuse_port:
        for address in config.address:
            _check_address_free(address)
        server.log.info(
            "Each worker listens on %s with a socket of its own (GUNICORN_REUSE_PORT)",
            ", ".join(config.bind),
        )
    for entry in _metrics_dir.iterdir():
        if entry.is_file() and entry.suffix == ".db":
            entry.unlink()
    server.log.info("Prometheus multiprocess directory: %s", _metrics_dir)


def _check_address_free(address: tuple[str, int] | str) -> None:
    """Exit unless this process can bind ``address`` without SO_REUSEPORT.

    With reuse_port the master opens no socket, and each worker binds with
    SO_REUSEPORT. A second server on the same port would then share its
    connections, and an address that cannot be bound would make the workers
    fail and restart for ever while the master runs. A plain bind fails in
    both cases, so the master stops at once, as it does without reuse_port.
    """
    if not isinstance(address, tuple):
        # GUNICORN_REUSE_PORT rejects a unix: bind, but gunicorn's own
        # settings may still add one, which needs no check here.
        return
    host, port = address
    address_text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The same option gunicorn sets, so connections closing on the port
        # (TIME_WAIT) do not count as in use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                advice = "stop the server that uses it, or choose another address"
            else:
                advice = "choose an address of this host, such as 0.0.0.0:80"
            raise SystemExit(
                f"server_app: cannot listen on {address_text}: "
                f"{error.strerror}: {advice}"
            ) from None


def post_fork(server: Any, worker: Any) -> None:
    """Let a stop signal end a worker that has not set its own handlers yet.

    A forked worker keeps the master's signal handlers, which only queue the
    signal in the worker's copy of the master, until it installs its own. The
    gevent worker spends part of that time patching the standard library, and
    a SIGTERM from a stop right after a start was lost there: the master then
    waited its graceful timeout, 30 s, before it killed the worker.
    """
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, _exit_before_serving)


def _exit_before_serving(signum: int, frame: object) -> None:
    # The worker has accepted no connection yet, so it has nothing to finish.
    os._exit(0)


def post_worker_init(worker: Any) -> None:
    """Store the worker's gunicorn settings as plain attributes."""
    gunicorn_worker.resolve_settings_once(worker.cfg)


def child_exit(server: Any, worker: Any) -> None:
    """Merge the gauges of an exited worker so they stop being reported live."""
    # Imported here because prometheus_client reads PROMETHEUS_MULTIPROC_DIR
    # once, on its first import, which must come after this module set it.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
        worker.pid, str(_metrics_dir)
    )
