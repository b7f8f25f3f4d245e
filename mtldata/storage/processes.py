"""This process: its id without a system call per read, and the cores it may run on.

Readers check on every record that their LMDB/HDF5 handles were opened in the current process
(a forked DataLoader worker must never use its parent's). `os.getpid()` is a system call, which
showed up at several percent of a worker's time per record; the id is cached here instead and
refreshed in every child forked through `os.fork` (multiprocessing's fork start method included).
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def current_pid() -> int:
    """The id of the process running this call, as `os.getpid()` returns it."""
    return _pid


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)
