"""A one-line progress display for long boots, as pip and apt show theirs:
elapsed time and what the guest is doing (its latest kernel line, or the
phase once its init runs), redrawn in place on a terminal."""

from __future__ import annotations

import shutil
import threading
import time
from types import TracebackType
from typing import TextIO

from .guest.console_protocol import INIT_MILESTONE, MARKER

REDRAW_SECONDS = 0.5
CLEAR_LINE = "\r\x1b[K"
RUNNING = "running the command"


class BootProgress:
    """Feed it the guest's console with `feed`; it redraws `stream` every
    REDRAW_SECONDS and clears its line when the `with` block ends."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._status = "starting the VM"
        self._partial = ""
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="pyfastvm-progress", daemon=True)

    def __enter__(self) -> BootProgress:
        self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        self._ticker.join()
        self._stream.write(CLEAR_LINE)
        self._stream.flush()

    def feed(self, data: bytes) -> None:
        """Takes console output; remembers its latest complete line."""
        with self._lock:
            *lines, self._partial = (self._partial + data.decode(errors="replace")).split("\n")
            for line in lines:
                self._status = _status_after(self._status, line.strip())

    def _tick(self) -> None:
        while not self._done.wait(REDRAW_SECONDS):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            status = self._status
        elapsed = time.monotonic() - self._started
        width = shutil.get_terminal_size().columns
        line = f"[{elapsed:6.1f}s] {status}"[: width - 1]
        self._stream.write(CLEAR_LINE + line)
        self._stream.flush()


def _status_after(status: str, line: str) -> str:
    """The status once `line` arrived: kernel lines while it boots, then the
    command's phase (its output is not shown: it comes at the end)."""
    if status == RUNNING or INIT_MILESTONE in line or MARKER in line:
        return RUNNING
    return f"booting: {line}" if line else status
