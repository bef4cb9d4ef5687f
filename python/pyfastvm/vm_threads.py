"""The threads a MicroVM runs (its vCPUs and its console pump)."""

from __future__ import annotations

import _thread
import threading
from collections.abc import Callable


class VmThread:
    """A daemon thread that is started without waiting for it to begin.

    ``threading.Thread.start`` waits until the new thread has been scheduled
    and has taken the GIL: on a busy host that wait was most of the time a
    clone took to start.
    """

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.name = name
        self._done = threading.Event()
        self._target = target
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self._done.set()

    def __repr__(self) -> str:
        return f"<VmThread {self.name} {'ended' if self._done.is_set() else 'running'}>"

    def join(self) -> None:
        """Waits until the target has returned."""
        self._done.wait()
