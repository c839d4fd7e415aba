"""The gevent Redis pipeline against a real redis-server, in a gevent process.

Each scenario runs in its own process because gevent must patch the
standard library before anything else imports it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from server_support import RedisServer

SCENARIOS = Path(__file__).with_name("pipeline_scenarios.py")


def run_scenario(name: str, redis_server: RedisServer) -> dict[str, Any]:
    try:
        completed = subprocess.run(
            [
                sys.executable,
                str(SCENARIOS),
                name,
                redis_server.url(),
                str(redis_server.process.pid),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        # The scenario resumes Redis itself, so this covers a scenario that died.
        redis_server.process.send_signal(signal.SIGCONT)
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def test_concurrent_calls_share_one_round_trip(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    result = run_scenario("concurrent-calls", redis_server)

    assert result["counts"] == list(range(1, 21))
    assert result["round_trips"] == [20]


@pytest.mark.parametrize("scenario", ["killed-waiter", "killed-next-sender"])
def test_killed_call_leaves_pipeline_working(
    redis_server: RedisServer, redis_client: redis.Redis, scenario: str
) -> None:
    result = run_scenario(scenario, redis_server)

    assert result["sender"] == 1
    assert result["killed"] == "GreenletExit"
    assert result["waiter"] == 2
    assert result["later"] == 3
    assert result["queued"] == 0
    assert result["sending"] is False
