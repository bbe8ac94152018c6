"""This process's id, kept current across ``fork`` without a system call per read.

``os.getpid()`` is a system call (glibc no longer caches it), a few tenths of a microsecond on a virtual
machine; the engine checks the process on every task call, to notice a fork.
"""

from __future__ import annotations

import os

pid = os.getpid()


def _update() -> None:
    global pid
    pid = os.getpid()


os.register_at_fork(after_in_child=_update)
