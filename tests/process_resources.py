"""What a test counts to show that guests leave nothing behind: open file
descriptors, mappings and OS threads (every thread, not only those the
threading module knows: vCPU and console threads are started with _thread,
device workers in Rust)."""

from __future__ import annotations

import os
import time

THREAD_EXIT_SECONDS = 5.0


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def os_threads_after_exits(expected: int) -> int:
    """The thread count once it is down to `expected`, or after a few
    seconds: a joined thread may still be returning to the OS."""
    deadline = time.monotonic() + THREAD_EXIT_SECONDS
    while os_threads() > expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return os_threads()
