"""The ID of this process, read from the kernel once and again after a fork."""

from __future__ import annotations

import os


class ProcessId:
    """A callable that returns the ID of the calling process.

    os.getpid() is a system call on every call. This reads the ID once, and
    again in the child after each os.fork(), which gunicorn uses to start
    its workers.
    """

    def __init__(self) -> None:
        self.value = os.getpid()
        os.register_at_fork(after_in_child=self._refresh)

    def _refresh(self) -> None:
        self.value = os.getpid()

    def __call__(self) -> int:
        return self.value


current_process_id = ProcessId()
