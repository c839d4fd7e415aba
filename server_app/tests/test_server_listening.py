"""How gunicorn's workers listen: GUNICORN_REUSE_PORT on real processes.

The sockets are read from /proc: /proc/net/tcp lists each IPv4 socket with
its local port, state and inode, and /proc/PID/fd links each open socket to
its inode, which shows the process that has it open.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from server_support import Gunicorn, free_port, request, run_gunicorn, wait_until

StartGunicorn = Callable[..., Gunicorn]

LISTEN = "0A"
ESTABLISHED = "01"


def tcp_sockets(port: int, state: str) -> set[int]:
    """Return the inodes of the IPv4 sockets on local ``port`` in ``state``."""
    inodes: set[int] = set()
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    for line in lines:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == state:
            inodes.add(int(fields[9]))
    return inodes


def opened_by(pid: int, inodes: set[int]) -> set[int]:
    """Return which of ``inodes`` the process ``pid`` has open."""
    open_inodes: set[int] = set()
    try:
        entries = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        # The process has exited since its PID was read.
        return open_inodes
    for entry in entries:
        try:
            target = os.readlink(entry)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inode = int(target[len("socket:[") : -1])
            if inode in inodes:
                open_inodes.add(inode)
    return open_inodes


def listeners_by_process(server: Gunicorn) -> dict[int, int]:
    """Return the number of listening sockets each gunicorn process holds."""
    listening = tcp_sockets(server.port, LISTEN)
    pids = [server.process.pid, *server.worker_pids()]
    return {pid: len(opened_by(pid, listening)) for pid in pids}


def test_gevent_workers_listen_on_own_sockets(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(GUNICORN_WORKERS="3")
    workers = server.wait_for_workers(3)

    counts = listeners_by_process(server)

    assert len(tcp_sockets(server.port, LISTEN)) == 3
    assert counts == {server.process.pid: 0, **dict.fromkeys(workers, 1)}


@pytest.mark.parametrize(
    "settings",
    [
        {"GUNICORN_WORKER_CLASS": "sync", "GUNICORN_THREADS": "1"},
        {"GUNICORN_WORKER_CLASS": "gevent", "GUNICORN_REUSE_PORT": "false"},
    ],
    ids=["sync-auto", "gevent-false"],
)
def test_workers_share_one_socket(
    start_gunicorn: StartGunicorn, settings: dict[str, str]
) -> None:
    server = start_gunicorn(GUNICORN_WORKERS="3", **settings)
    workers = server.wait_for_workers(3)

    counts = listeners_by_process(server)

    # The master opened the socket and every worker inherited it.
    assert len(tcp_sockets(server.port, LISTEN)) == 1
    assert counts == dict.fromkeys([server.process.pid, *workers], 1)


def test_connections_spread_over_every_worker(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(GUNICORN_WORKERS="3", RATE_LIMIT="1000/minute")
    workers = server.wait_for_workers(3)
    clients: list[socket.socket] = []
    try:
        # 30 keep-alive connections opened together, as a load tool opens
        # them. Each is held open after its response.
        for _ in range(30):
            clients.append(socket.create_connection(("127.0.0.1", server.port), 10))
        for client in clients:
            client.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        for client in clients:
            assert client.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")

        established = tcp_sockets(server.port, ESTABLISHED)
        per_worker = [len(opened_by(pid, established)) for pid in workers]
    finally:
        for client in clients:
            client.close()

    # The kernel hashes each connection to one of the 3 sockets, so a worker
    # without any of 30 connections has a chance of 3 * (2/3)**30, 1.5e-5.
    assert sum(per_worker) == 30
    assert min(per_worker) >= 1, per_worker


def test_killed_worker_is_replaced_with_its_own_socket(
    start_gunicorn: StartGunicorn,
) -> None:
    server = start_gunicorn(GUNICORN_WORKERS="3", RATE_LIMIT="1000/minute")
    workers = server.wait_for_workers(3)

    os.kill(workers[0], signal.SIGKILL)

    def replaced() -> bool:
        current = server.worker_pids()
        counts = listeners_by_process(server)
        return (
            len(current) == 3
            and workers[0] not in current
            and sorted(counts.values()) == [0, 1, 1, 1]
        )

    wait_until(replaced, 20, "the master replaces the killed worker")
    responses = [request(server.port) for _ in range(20)]
    assert [r.status for r in responses] == [200] * 20


def start_second_server(
    tmp_path: Path, port: int, **settings: str
) -> subprocess.CompletedProcess[str]:
    """Run gunicorn on 127.0.0.1:``port`` until it exits, with ``settings``."""
    return run_gunicorn(tmp_path, GUNICORN_BIND=f"127.0.0.1:{port}", **settings)


def test_second_server_on_port_exits(
    start_gunicorn: StartGunicorn, tmp_path: Path
) -> None:
    server = start_gunicorn(GUNICORN_WORKERS="2")

    result = start_second_server(tmp_path, server.port)

    # SO_REUSEPORT alone would let the second server share the port.
    assert result.returncode == 1
    assert "Booting worker" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"server_app: cannot listen on 127.0.0.1:{server.port}: "
        "Address already in use: stop the server that uses it, or choose "
        "another address"
    )
    assert len(tcp_sockets(server.port, LISTEN)) == 2


def test_port_held_by_other_program_exits(tmp_path: Path) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        result = start_second_server(tmp_path, port)

    assert result.returncode == 1
    assert "Address already in use" in result.stderr
    assert "Booting worker" not in result.stderr


def test_startup_logs_listening_address(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn(GUNICORN_WORKERS="2")

    assert (
        f"Each worker listens on 127.0.0.1:{server.port} with a socket of its own"
        in server.log()
    )


def test_bind_from_command_line_is_checked(
    start_gunicorn: StartGunicorn, tmp_path: Path
) -> None:
    server = start_gunicorn(GUNICORN_WORKERS="2")

    # GUNICORN_CMD_ARGS overrides GUNICORN_BIND inside gunicorn.
    result = start_second_server(
        tmp_path, free_port(), GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{server.port}"
    )

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"server_app: cannot listen on 127.0.0.1:{server.port}: Address already in use"
    )


def test_address_of_other_host_exits(tmp_path: Path) -> None:
    # 192.0.2.1 is reserved for documentation, so no interface here has it.
    # Binding it fails at once and sends nothing.
    result = run_gunicorn(tmp_path, GUNICORN_BIND="192.0.2.1:8080")

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "server_app: cannot listen on 192.0.2.1:8080: Cannot assign requested "
        "address: choose an address of this host, such as 0.0.0.0:80"
    )
