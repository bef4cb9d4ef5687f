"""The `pyfastvm` command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from boot_timeouts import MINIMAL_BOOT_TIMEOUT

from pyfastvm.guest.minimal_kernel import minimal_kernel
from pyfastvm.progress import CLEAR_LINE

GUEST_TIMEOUT = MINIMAL_BOOT_TIMEOUT - 60


def pyfastvm_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyfastvm", "run", "--kernel", str(minimal_kernel()), *args]


@pytest.mark.hwkvm
def test_the_cli_prints_the_output_and_exits_with_the_code_quietly_off_a_terminal() -> None:
    # The CLI's own timeout comes first, so a stuck guest's console tail is on stderr.
    command = pyfastvm_run(
        "--snapshot",
        "--timeout",
        str(GUEST_TIMEOUT),
        "--",
        "sh",
        "-c",
        "echo from-the-guest; exit 7",
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=MINIMAL_BOOT_TIMEOUT)
    assert (done.returncode, done.stdout) == (7, "from-the-guest\n"), done.stderr
    assert CLEAR_LINE not in done.stderr  # no progress line when stderr is not a terminal


def test_the_cli_shows_the_boots_progress_on_a_terminal() -> None:
    """Elapsed time and the latest kernel line, redrawn in place on stderr."""
    controller, terminal = os.openpty()
    try:
        command = pyfastvm_run("--", "true")
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=terminal)
        os.close(terminal)
        shown = b""
        while chunk := _read(controller):  # until the child closes the terminal
            shown += chunk
        assert child.wait(MINIMAL_BOOT_TIMEOUT) == 0
    finally:
        os.close(controller)
    assert CLEAR_LINE.encode() in shown and b"s] booting: " in shown


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the terminal's other side is closed and drained
        return b""
