"""The process ID read once per process, with real forks in a fresh Python process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis
from server_support import RedisServer

# Runs the fixed window script in this process, in a forked child and again
# in this process, and prints the process IDs, the connections and the counts.
FORKED_SCRIPT_CALLS = """
import json, os, sys
from limits.storage import RedisStorage
from server_app.process_id import current_process_id
from server_app.strategies import _INCR_EXPIRE_PTTL, _ScriptCaller

caller = _ScriptCaller(RedisStorage(sys.argv[1]), _INCR_EXPIRE_PTTL, per_thread=False)
first = caller("forked", 60, 1)[0]
parent_connection = id(caller._local.connection)
reader, writer = os.pipe()
child = os.fork()
if child == 0:
    report = {
        "process_id": current_process_id(),
        "getpid": os.getpid(),
        "count": caller("forked", 60, 1)[0],
        "new_connection": id(caller._local.connection) != parent_connection,
    }
    os.write(writer, json.dumps(report).encode())
    os._exit(0)
os.waitpid(child, 0)
print(json.dumps({
    "parent_process_id": current_process_id(),
    "parent_getpid": os.getpid(),
    "child": json.loads(os.read(reader, 4096)),
    "counts": [first, caller("forked", 60, 1)[0]],
    "same_connection": id(caller._local.connection) == parent_connection,
}))
"""


def test_forked_child_opens_own_connection(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORKED_SCRIPT_CALLS, redis_server.url()],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report = json.loads(result.stdout)

    child = report["child"]
    assert child["process_id"] == child["getpid"]
    assert child["process_id"] != report["parent_process_id"]
    assert report["parent_process_id"] == report["parent_getpid"]
    assert child["new_connection"] is True
    assert child["count"] == 2
    assert report["counts"] == [1, 3]
    assert report["same_connection"] is True
