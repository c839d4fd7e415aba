"""Run one scenario of the gevent Redis pipeline and print its result as JSON.

Usage: ``python pipeline_scenarios.py SCENARIO REDIS_URL REDIS_PID``. The
process patches the standard library with gevent first, as gunicorn's gevent
worker does, so the script caller picks the pipeline. The scenarios that pause
Redis send SIGSTOP and SIGCONT to REDIS_PID, a redis-server that the calling
test started.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 - the standard library is imported after patching.
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from limits.storage import RedisStorage  # noqa: E402

from server_app.strategies import (  # noqa: E402
    _INCR_EXPIRE_PTTL,
    _new_script_caller,
    _PipelinedScriptCaller,
)

KEY = "pipeline-scenario"
WINDOW_SECONDS = 60
# How long the greenlets get to reach their waiting point.
SETTLE_SECONDS = 0.2
JOIN_TIMEOUT_SECONDS = 10


def count_of(caller: _PipelinedScriptCaller) -> int:
    """Increment the scenario's counter through ``caller`` and return the count."""
    count, _ttl_ms = caller(KEY, WINDOW_SECONDS, 1)
    return int(count)


def concurrent_calls(caller: _PipelinedScriptCaller, redis_pid: int) -> dict[str, Any]:
    """Send twenty calls at once, which share one round trip and get distinct counts."""
    round_trips = []
    run_many = caller._caller.run_many

    def counting_run_many(calls: list[tuple[object, ...]]) -> list[Any]:
        round_trips.append(len(calls))
        return run_many(calls)

    caller._caller.run_many = counting_run_many  # type: ignore[method-assign]
    greenlets = [gevent.spawn(count_of, caller) for _ in range(20)]
    gevent.joinall(greenlets, timeout=JOIN_TIMEOUT_SECONDS)
    return {
        "counts": sorted(g.value for g in greenlets if g.successful()),
        "round_trips": round_trips,
    }


def killed_waiter(caller: _PipelinedScriptCaller, redis_pid: int) -> dict[str, Any]:
    """A waiting call is killed while the sender waits for a paused Redis."""
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        sender = gevent.spawn(count_of, caller)
        gevent.sleep(SETTLE_SECONDS)
        killed = gevent.spawn(count_of, caller)
        waiter = gevent.spawn(count_of, caller)
        gevent.sleep(SETTLE_SECONDS)
        killed.kill()
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    return finish(caller, sender, killed, waiter)


def killed_next_sender(
    caller: _PipelinedScriptCaller, redis_pid: int
) -> dict[str, Any]:
    """The call that gets the turn to send is killed before it sends."""
    killed: gevent.Greenlet | None = None

    def count_then_kill() -> int:
        count = count_of(caller)
        # The turn has passed to the killed call, which has not run yet, so
        # the kill reaches it in the yield before its send.
        assert killed is not None
        killed.kill(block=False)
        return count

    os.kill(redis_pid, signal.SIGSTOP)
    try:
        sender = gevent.spawn(count_then_kill)
        gevent.sleep(SETTLE_SECONDS)
        killed = gevent.spawn(count_of, caller)
        waiter = gevent.spawn(count_of, caller)
        gevent.sleep(SETTLE_SECONDS)
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    return finish(caller, sender, killed, waiter)


def finish(
    caller: _PipelinedScriptCaller,
    sender: gevent.Greenlet,
    killed: gevent.Greenlet,
    waiter: gevent.Greenlet,
) -> dict[str, Any]:
    """Wait for the scenario's greenlets, then make one more call."""
    gevent.joinall([sender, killed, waiter], timeout=JOIN_TIMEOUT_SECONDS)
    later = gevent.spawn(count_of, caller)
    later.join(timeout=JOIN_TIMEOUT_SECONDS)
    return {
        "sender": sender.value,
        "killed": type(killed.value).__name__,
        "waiter": waiter.value,
        "later": later.value,
        "queued": len(caller._queue),
        "sending": caller._sending,
    }


SCENARIOS: dict[str, Callable[[_PipelinedScriptCaller, int], dict[str, Any]]] = {
    "concurrent-calls": concurrent_calls,
    "killed-waiter": killed_waiter,
    "killed-next-sender": killed_next_sender,
}


def main() -> None:
    scenario, redis_url, redis_pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    caller = _new_script_caller(RedisStorage(redis_url), _INCR_EXPIRE_PTTL)
    if not isinstance(caller, _PipelinedScriptCaller):
        raise SystemExit(f"expected the gevent pipeline, got {type(caller).__name__}")
    print(json.dumps(SCENARIOS[scenario](caller, redis_pid)))


if __name__ == "__main__":
    main()
