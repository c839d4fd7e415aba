"""Start and stop redis-server, gunicorn and nginx on loopback for tests and bench.

Every process runs in its own temporary directory with its log in a file, binds
a port picked at run time, and is stopped by its PID only.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
# The gunicorn arguments that run server_app with its packaged config.
SERVER_APP_ARGS = ("-c", "python:server_app.gunicorn_conf", "server_app.wsgi:app")
REDIS_SERVER = "/usr/bin/redis-server"
NGINX = "/usr/sbin/nginx"
STARTUP_TIMEOUT_SECONDS = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that the kernel reports free on host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int) -> bool:
    """Return whether a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class ManagedProcess:
    """A child process with its log file, stopped by PID."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.popen = subprocess.Popen(
                list(self.argv),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
            )
        log.info("started %s (pid %d): %s", self.name, self.pid, " ".join(self.argv))

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def send_signal(self, signum: int) -> None:
        if self.running():
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.popen.wait(timeout=timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Send signum to the process, then SIGKILL if it outlives timeout."""
        if not self.running():
            return
        os.kill(self.pid, signum)
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) ignored signal %d", self.name, self.pid, signum)
            os.kill(self.pid, signal.SIGKILL)
            self.wait(timeout)
        log.info("stopped %s (pid %d)", self.name, self.pid)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_port(self, host: str, port: int) -> None:
        """Wait until host:port accepts connections, or raise with the log."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if port_accepts(host, port):
                return
            if not self.running():
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not listen on {host}:{port}; log:\n{self.output()}"
        )


def child_pids(pid: int) -> list[int]:
    """Return the PIDs of the direct children of pid (gunicorn workers)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.extend(int(c) for c in (task / "children").read_text().split())
    return children


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time pid has used, from /proc/PID/stat."""
    # The command name in field 2 may contain spaces, so split after its ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """Return the CPU time of pid and its direct children (workers) together."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in child_pids(pid))


def rss_kib(pid: int) -> int:
    """Return the resident set size of pid in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS line for pid {pid}")


class RedisServer:
    """A redis-server without persistence on a loopback port of its own."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.process = self._new_process()

    def _new_process(self) -> ManagedProcess:
        argv = [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        return ManagedProcess("redis-server", argv, self.workdir / "redis.log")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = self._new_process()
        self.process.start()
        self.process.wait_for_port("127.0.0.1", self.port)

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        """Kill redis-server with SIGKILL, so every counter in memory is lost."""
        self.process.stop(signal.SIGKILL)

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), decode_responses=True)

    def key_count(self, db: int = 0) -> int:
        """Return the number of keys in database db."""
        count: int = self.client(db).dbsize()  # type: ignore[assignment]
        return count

    def command_calls(self) -> dict[str, int]:
        """Return the calls per command from INFO commandstats."""
        # redis-py types info() for its sync and async clients alike.
        stats: dict[str, dict[str, int]] = self.client().info("commandstats")  # type: ignore[assignment]
        return {
            name.removeprefix("cmdstat_"): int(values["calls"])
            for name, values in stats.items()
        }


def gunicorn_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Return an environment for gunicorn: this one, minus app settings, plus extra."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GUNICORN_", "RATE_LIMIT", "REDIS_", "PROMETHEUS_"))
    }
    env.update(extra)
    return env


class GunicornServer:
    """gunicorn serving a WSGI app on a loopback port of its own."""

    def __init__(
        self,
        workdir: Path,
        settings: Mapping[str, str],
        argv_tail: Sequence[str] = SERVER_APP_ARGS,
        name: str = "gunicorn",
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.name = name
        env = {"GUNICORN_BIND": f"127.0.0.1:{self.port}", **settings}
        if "PROMETHEUS_MULTIPROC_DIR" not in env:
            metrics_dir = workdir / "metrics"
            metrics_dir.mkdir(parents=True, exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        self.env = gunicorn_env(env)
        self.process = ManagedProcess(
            name,
            [GUNICORN, *argv_tail],
            workdir / f"{name}.log",
            env=self.env,
            cwd=REPO_ROOT,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process.start()
        self.process.wait_for_port("127.0.0.1", self.port)

    def stop(self) -> None:
        self.process.stop()

    def worker_pids(self) -> list[int]:
        return child_pids(self.process.pid)

    def wait_for_workers(self, count: int) -> list[int]:
        """Wait until the master has count workers and return their PIDs."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) == count:
                return sorted(pids)
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} has workers {self.worker_pids()}, expected {count}"
        )


def run_gunicorn(
    workdir: Path, settings: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run server_app under gunicorn in ``workdir`` until it exits.

    This is for settings that stop the server. It binds a free loopback
    port, writes metrics under ``workdir`` and points at a closed Redis port
    unless ``settings`` sets GUNICORN_BIND, PROMETHEUS_MULTIPROC_DIR or
    REDIS_URL.
    """
    env = gunicorn_env(
        {
            "GUNICORN_BIND": f"127.0.0.1:{free_port()}",
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
            # Nothing listens on port 1 (tcpmux) here.
            "REDIS_URL": "redis://127.0.0.1:1/0",
            **settings,
        }
    )
    return subprocess.run(
        [GUNICORN, *SERVER_APP_ARGS],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def bare_gunicorn_argv(
    port: int, workers: int, worker_class: str, threads: int, reuse_port: bool
) -> list[str]:
    """Return gunicorn arguments for the bench's Flask hello app, no limiter."""
    return [
        "--bind",
        f"127.0.0.1:{port}",
        "--no-control-socket",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--threads",
        str(threads),
        *(["--reuse-port"] if reuse_port else []),
        "bench.hello_app:app",
    ]


class NginxServer:
    """nginx in the foreground with its own prefix directory and config."""

    def __init__(self, workdir: Path, server_block: str, http_extra: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        (workdir / "tmp").mkdir(exist_ok=True)
        config = NGINX_CONFIG.format(
            port=self.port, server_block=server_block, http_extra=http_extra
        )
        self.config_path = workdir / "nginx.conf"
        self.config_path.write_text(config)
        argv = [NGINX, "-p", str(workdir), "-c", str(self.config_path)]
        self.process = ManagedProcess("nginx", argv, workdir / "nginx.out")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process.start()
        self.process.wait_for_port("127.0.0.1", self.port)

    def stop(self) -> None:
        # On SIGQUIT nginx shuts down gracefully, master and workers alike.
        self.process.stop(signal.SIGQUIT)


NGINX_CONFIG = """\
daemon off;
user nobody nogroup;
worker_processes auto;
pid nginx.pid;
error_log logs/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    {http_extra}
    server {{
        listen 127.0.0.1:{port};
        {server_block}
    }}
}}
"""
