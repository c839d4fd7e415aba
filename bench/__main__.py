"""Benchmark our server against bare gunicorn + Flask and nginx with wrk.

Run from the repository root: `python -m bench` (or `make bench`). Every
server runs on loopback at the same time; the runs interleave the servers so
that the machine's noise spreads over all of them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from bench import report, wrk
from bench.configs import (
    BenchTarget,
    WorkerSetup,
    gunicorn_targets,
    nginx_targets,
)
from bench.processes import (
    GunicornServer,
    RedisServer,
    cpu_seconds,
    rss_kib,
    tree_cpu_seconds,
)

log = logging.getLogger("bench")

DEFAULT_SETUPS = "gevent:3,gthread:3:4,sync:3"
WARMUP_SECONDS = 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--seconds", type=int, default=5, help="length of each wrk run in seconds"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="runs of each server per connection count"
    )
    parser.add_argument(
        "--connections",
        default="1,16,64",
        help="comma-separated wrk connection counts",
    )
    parser.add_argument(
        "--setups",
        default=DEFAULT_SETUPS,
        help="comma-separated gunicorn setups CLASS:WORKERS[:THREADS]; the first "
        "is the baseline for the nginx ratios",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("docs"),
        help="where benchmarks.md, benchmarks.png and benchmarks.json go",
    )
    return parser.parse_args()


def measure_rss(targets: list[BenchTarget]) -> dict[str, dict[str, int]]:
    """Return the RSS in KiB of each gunicorn master and its workers."""
    rss: dict[str, dict[str, int]] = {}
    for target in targets:
        if isinstance(target.server, GunicornServer):
            workers = [rss_kib(pid) for pid in target.server.worker_pids()]
            rss[target.name] = {
                "master_kib": rss_kib(target.server.process.pid),
                "workers": len(workers),
                "worker_mean_kib": sum(workers) // max(len(workers), 1),
                "worker_max_kib": max(workers, default=0),
            }
    return rss


def prime(target: BenchTarget) -> None:
    """Send one request, so the over-limit server has spent its only admission."""
    with contextlib.suppress(urllib.request.HTTPError):
        urllib.request.urlopen(target.url, timeout=5).close()


def run_rounds(
    targets: list[BenchTarget],
    redis_server: RedisServer,
    connections: list[int],
    rounds: int,
    seconds: int,
) -> list[dict[str, object]]:
    """Run wrk rounds x connections x targets, rotating the target order."""
    runs: list[dict[str, object]] = []
    total = rounds * len(connections) * len(targets)
    for round_index in range(rounds):
        for conns in connections:
            shift = (round_index + conns) % len(targets)
            for target in targets[shift:] + targets[:shift]:
                server_pid = target.server.process.pid
                redis_pid = redis_server.process.pid
                before = Counter(redis_server.command_calls())
                server_cpu = tree_cpu_seconds(server_pid)
                redis_cpu = cpu_seconds(redis_pid)
                result = wrk.run(target.url, conns, seconds)
                server_cpu = tree_cpu_seconds(server_pid) - server_cpu
                redis_cpu = cpu_seconds(redis_pid) - redis_cpu
                after = Counter(redis_server.command_calls())
                commands = dict(after - before)
                commands.pop("info", None)
                # CPU time per request is steadier than requests/s when other
                # processes share the machine, because waiting costs no CPU.
                requests = max(result.requests, 1)
                runs.append(
                    {
                        "target": target.name,
                        "round": round_index,
                        "connections": conns,
                        "result": result.__dict__,
                        "redis_commands": commands,
                        "server_cpu_us": 1e6 * server_cpu / requests,
                        "redis_cpu_us": 1e6 * redis_cpu / requests,
                    }
                )
                log.info(
                    "[%d/%d] %s c=%d: %.0f req/s p99 %.2f ms non-2xx %d errors %d",
                    len(runs),
                    total,
                    target.name,
                    conns,
                    result.requests_per_second,
                    result.p99_ms,
                    result.non_2xx,
                    result.socket_errors,
                )
    return runs


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args()
    connections = [int(c) for c in args.connections.split(",")]
    setups = [WorkerSetup.parse(s) for s in args.setups.split(",")]
    started = time.monotonic()
    # Read before the servers start, so it names the code they load.
    machine = report.machine_description()

    with tempfile.TemporaryDirectory(prefix="re-bench-") as tmp:
        workdir = Path(tmp)
        redis_server = RedisServer(workdir / "redis")
        targets = nginx_targets(workdir)
        for index, setup in enumerate(setups):
            first_db = 2 * index
            targets += gunicorn_targets(workdir, redis_server, setup, first_db)
        started_servers: list[BenchTarget] = []
        try:
            redis_server.start()
            for target in targets:
                target.server.start()
                started_servers.append(target)
                prime(target)
                wrk.run(target.url, max(connections), WARMUP_SECONDS)
            runs = run_rounds(
                targets, redis_server, connections, args.rounds, args.seconds
            )
            rss = measure_rss(targets)
        finally:
            for target in reversed(started_servers):
                target.server.stop()
            redis_server.stop()

    elapsed = time.monotonic() - started
    data = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "connections": connections,
        "setups": [s.label for s in setups],
        "targets": [t.name for t in targets],
        "target_setups": {t.name: t.setup.label if t.setup else None for t in targets},
        "runs": runs,
        "rss": rss,
        "elapsed_seconds": round(elapsed),
        "machine": machine,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "benchmarks.json").write_text(json.dumps(data, indent=1) + "\n")
    report.write(data, args.output_dir)
    log.info("benchmark took %.0f s; wrote %s", elapsed, args.output_dir)


if __name__ == "__main__":
    main()
