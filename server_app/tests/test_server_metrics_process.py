"""The metric values' cached process ID, in fresh processes with real forks.

prometheus_client picks its value class when it is first imported, so each
case runs in a new Python process with PROMETHEUS_MULTIPROC_DIR set or not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Counts 1 in this process and 2 in a forked child, then prints the files
# written and the total that /metrics would report.
FORKED_COUNTS = """
import json, os, sys
from prometheus_client import CollectorRegistry, Counter, values
from prometheus_client.multiprocess import MultiProcessCollector
from server_app.metrics import read_process_id_once

read_process_id_once()
value_class = values.ValueClass
read_process_id_once()
counter = Counter("forked_total", "Counted in two processes.")
counter.inc(1)
child = os.fork()
if child == 0:
    counter.inc(2)
    os._exit(0)
os.waitpid(child, 0)
registry = CollectorRegistry()
MultiProcessCollector(registry)
print(json.dumps({
    "parent": os.getpid(),
    "child": child,
    "same_class": values.ValueClass is value_class,
    "files": sorted(os.listdir(sys.argv[1])),
    "total": registry.get_sample_value("forked_total"),
}))
"""


def run_script(script: str, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def test_forked_child_writes_own_file(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    report = json.loads(run_script(FORKED_COUNTS, env, str(tmp_path)))

    assert report["same_class"] is True
    assert report["files"] == sorted(
        [f"counter_{report['parent']}.db", f"counter_{report['child']}.db"]
    )
    assert report["total"] == 3.0


def test_single_process_mode_is_unchanged() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    script = (
        "from prometheus_client import values\n"
        "from server_app.metrics import read_process_id_once\n"
        "before = values.ValueClass\n"
        "read_process_id_once()\n"
        "print(values.ValueClass is before, before.__name__)\n"
    )

    assert run_script(script, env).split() == ["True", "MutexValue"]
