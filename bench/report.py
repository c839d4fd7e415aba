"""Write the benchmark's markdown table and plot from its raw runs."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Targets at these connection counts: our req/s at least 0.7 times bare
# gunicorn's, and our p99 latency at most 2 times bare gunicorn's.
TARGET_CONNECTIONS = (16, 64)
MIN_THROUGHPUT_RATIO = 0.7
MAX_P99_RATIO = 2.0


def _server_app_revision() -> str:
    """Return the commit of server_app/ and whether its files differ from it."""
    repo = Path(__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%h", "--", "server_app"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--", "server_app/src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not commit:
        return "unknown (not a git checkout)"
    if changed:
        return (
            f"{commit} with uncommitted changes to {', '.join(changed.split()[1::2])}"
        )
    return commit


def machine_description() -> dict[str, str]:
    """Return the CPU, core count and versions the numbers were measured with."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    tools = {}
    for name, argv in {
        "nginx": ["/usr/sbin/nginx", "-v"],
        "wrk": ["/usr/bin/wrk", "--version"],
        "redis-server": ["/usr/bin/redis-server", "--version"],
    }.items():
        completed = subprocess.run(argv, capture_output=True, text=True, check=False)
        tools[name] = (completed.stdout + completed.stderr).splitlines()[0]
    packages = {
        name: metadata.version(name)
        for name in ("flask", "gunicorn", "flask-limiter", "limits", "redis")
    }
    return {
        "server_app": _server_app_revision(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "tools": "; ".join(tools.values()),
        "packages": ", ".join(f"{k} {v}" for k, v in packages.items()),
    }


def summarise(data: dict[str, Any]) -> dict[tuple[str, int], dict[str, float]]:
    """Return median req/s, spread and median latencies per target and conns."""
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for run in data["runs"]:
        grouped[(run["target"], run["connections"])].append(
            {
                **run["result"],
                "server_cpu_us": run["server_cpu_us"],
                "redis_cpu_us": run["redis_cpu_us"],
            }
        )
    summary = {}
    for key, results in grouped.items():
        rates = [r["requests_per_second"] for r in results]
        median_rate = statistics.median(rates)
        summary[key] = {
            "rps": median_rate,
            "rps_min": min(rates),
            "rps_max": max(rates),
            "spread_pct": 100 * (max(rates) - min(rates)) / median_rate,
            "p50": statistics.median(r["p50_ms"] for r in results),
            "p99": statistics.median(r["p99_ms"] for r in results),
            "server_cpu_us": statistics.median(r["server_cpu_us"] for r in results),
            "redis_cpu_us": statistics.median(r["redis_cpu_us"] for r in results),
            "non_2xx": sum(r["non_2xx"] for r in results),
            "requests": sum(r["requests"] for r in results),
            "socket_errors": sum(r["socket_errors"] for r in results),
        }
    return summary


def baseline_name(data: dict[str, Any], target: str) -> str:
    """Return the bare gunicorn target that target's ratios divide by."""
    setup = data["target_setups"][target] or data["setups"][0]
    return f"bare gunicorn, {setup}"


def redis_commands_per_request(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Return Redis calls per request by command for each of our targets."""
    calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    requests: dict[str, int] = defaultdict(int)
    for run in data["runs"]:
        if not run["target"].startswith("ours"):
            continue
        requests[run["target"]] += run["result"]["requests"]
        for command, count in run["redis_commands"].items():
            calls[run["target"]][command] += count
    return {
        target: {
            command: count / requests[target]
            for command, count in sorted(calls[target].items())
        }
        for target in requests
    }


Summary = dict[tuple[str, int], dict[str, float]]


def _table(data: dict[str, Any], summary: Summary) -> str:
    lines = [
        "| Server | Conns | Median req/s | Min-max req/s (spread) | p50 ms | p99 ms "
        "| req/s ÷ bare | p99 ÷ bare | Server CPU µs/req | Redis CPU µs/req "
        "| Non-2xx | Socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for conns in data["connections"]:
        for target in data["targets"]:
            row = summary[(target, conns)]
            base = summary[(baseline_name(data, target), conns)]
            lines.append(
                f"| {target} | {conns} | {row['rps']:.0f} "
                f"| {row['rps_min']:.0f}-{row['rps_max']:.0f} "
                f"({row['spread_pct']:.0f}%) "
                f"| {row['p50']:.2f} | {row['p99']:.2f} "
                f"| {row['rps'] / base['rps']:.2f} | {row['p99'] / base['p99']:.2f} "
                f"| {row['server_cpu_us']:.0f} | {row['redis_cpu_us']:.1f} "
                f"| {row['non_2xx']:.0f} | {row['socket_errors']:.0f} |"
            )
    return "\n".join(lines)


def _target_checks(
    data: dict[str, Any], summary: dict[tuple[str, int], dict[str, float]]
) -> str:
    lines = [
        "| Setup | Conns | ours ÷ bare req/s (≥ 0.7) | over ÷ under limit req/s "
        "(≥ 1.0) | ours p99 ÷ bare p99 (≤ 2.0) | bare ÷ ours CPU/req, under "
        "and over limit |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for setup in data["setups"]:
        for conns in TARGET_CONNECTIONS:
            if conns not in data["connections"]:
                continue
            bare = summary[(f"bare gunicorn, {setup}", conns)]
            under = summary[(f"ours under limit, {setup}", conns)]
            over = summary[(f"ours over limit, {setup}", conns)]
            throughput = under["rps"] / bare["rps"]
            over_under = over["rps"] / under["rps"]
            p99 = max(under["p99"], over["p99"]) / bare["p99"]
            lines.append(
                f"| {setup} | {conns} "
                f"| {throughput:.2f} {_mark(throughput >= MIN_THROUGHPUT_RATIO)} "
                f"| {over_under:.2f} {_mark(over_under >= 1.0)} "
                f"| {p99:.2f} {_mark(p99 <= MAX_P99_RATIO)} "
                f"| {bare['server_cpu_us'] / under['server_cpu_us']:.2f}, "
                f"{bare['server_cpu_us'] / over['server_cpu_us']:.2f} |"
            )
    return "\n".join(lines)


def _mark(passed: bool) -> str:
    return "met" if passed else "**missed**"


def _redis_table(data: dict[str, Any]) -> str:
    lines = [
        "| Server | Redis calls per request, by command | Total |",
        "|---|---|---:|",
    ]
    for target, per_command in redis_commands_per_request(data).items():
        detail = ", ".join(f"{cmd} {n:.2f}" for cmd, n in per_command.items())
        lines.append(
            f"| {target} | {detail or 'none'} | {sum(per_command.values()):.2f} |"
        )
    return "\n".join(lines)


def _rss_table(data: dict[str, Any]) -> str:
    lines = [
        "| Server | Workers | Master RSS MiB | Mean worker RSS MiB "
        "| Max worker RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for target, rss in data["rss"].items():
        lines.append(
            f"| {target} | {rss['workers']} | {rss['master_kib'] / 1024:.1f} "
            f"| {rss['worker_mean_kib'] / 1024:.1f} "
            f"| {rss['worker_max_kib'] / 1024:.1f} |"
        )
    return "\n".join(lines)


def plot(
    data: dict[str, Any],
    summary: dict[tuple[str, int], dict[str, float]],
    path: Path,
) -> None:
    """Draw median req/s per server, one bar per connection count."""
    targets = data["targets"]
    connections = data["connections"]
    width = 0.8 / len(connections)
    figure, axes = plt.subplots(figsize=(12, 6))

    for index, conns in enumerate(connections):
        medians = [summary[(t, conns)]["rps"] for t in targets]
        lows = [
            m - summary[(t, conns)]["rps_min"]
            for t, m in zip(targets, medians, strict=True)
        ]
        highs = [
            summary[(t, conns)]["rps_max"] - m
            for t, m in zip(targets, medians, strict=True)
        ]
        positions = [i + index * width for i in range(len(targets))]
        axes.bar(
            positions,
            medians,
            width,
            yerr=[lows, highs],
            capsize=2,
            label=f"{conns} connections",
        )

    axes.set_yscale("log")
    axes.set_ylabel("median requests/s (bars: min-max of rounds)")
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(targets))])
    axes.set_xticklabels(targets, rotation=35, ha="right", fontsize=8)
    axes.legend()
    axes.set_title(f"wrk, {data['seconds']} s per run, {data['rounds']} rounds")

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(data: dict[str, Any], output_dir: Path) -> None:
    """Write benchmarks.md and benchmarks.png into output_dir."""
    summary = summarise(data)
    plot(data, summary, output_dir / "benchmarks.png")
    machine = data["machine"]
    text = f"""\
# Benchmarks

Generated by `make bench` (`python -m bench`); the raw runs are in
`benchmarks.json`. Do not edit by hand: rerun the benchmark instead.

Every server ran on loopback at the same time, and `wrk` (one thread) ran
each of them for {data["seconds"]} s at {", ".join(map(str, data["connections"]))}
connections, {data["rounds"]} rounds, rotating the order of the servers in
each round. The whole run took {data["elapsed_seconds"]} s. The numbers are
ratios measured side by side on one shared machine: compare rows, not runs
on different days.

- server_app: {machine.get("server_app", "not recorded")}.
- Machine: {machine["cpu"]}, {machine["cores"]} cores, Linux {machine["kernel"]},
  Python {machine["python"]}.
- Tools: {machine["tools"]}.
- Packages: {machine["packages"]}.

## Servers

- **nginx return 200**: nginx answers `GET /` with the same JSON from its
  config, the fastest response any server here can send.
- **nginx limit_req**: nginx's own per-address limit in shared memory, once
  with a rate it never reaches and once with 1 request a minute.
- **bare gunicorn**: gunicorn with a Flask app that returns the same JSON,
  with no limiter and no metrics, and the same worker class and counts. Like
  ours with its default `GUNICORN_REUSE_PORT=auto`, each `gevent` or
  `gthread` worker listens on a socket of its own, and `sync` workers share
  one.
- **ours**: `server_app` as deployed (Flask-Limiter with Redis storage,
  Prometheus metrics in multiprocess mode), once with `RATE_LIMIT`
  1000000000/minute (every request admitted) and once with 1/hour (every
  request after the first rejected with 429).

Ratios divide by bare gunicorn with the same worker setup; the nginx rows
divide by the first setup ({data["setups"][0]}). Server CPU is the user plus
system time of the server's master and workers during the run, and Redis CPU
that of redis-server, both from `/proc/PID/stat` and divided by the requests
that wrk completed.

![Median requests/s per server](benchmarks.png)

## Targets at 16 and 64 connections

The last column divides bare gunicorn's CPU time per request by ours. Waiting
costs no CPU time, so this ratio moves less than requests/s when other
processes load the machine, and it is the throughput ratio to expect when the
servers are CPU-bound.

{_target_checks(data, summary)}

## Results

{_table(data, summary)}

## Redis commands per request

From `INFO commandstats` before and after each run, divided by the requests
that wrk completed in that run (requests still in flight when wrk stops make
this an estimate, within a few per run).

{_redis_table(data)}

## Memory

Resident set size after the last run, from `/proc/PID/status`.

{_rss_table(data)}
"""
    (output_dir / "benchmarks.md").write_text(text)


if __name__ == "__main__":
    # Regenerate the page from a saved benchmarks.json without rerunning wrk.
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")
    write(json.loads((directory / "benchmarks.json").read_text()), directory)
