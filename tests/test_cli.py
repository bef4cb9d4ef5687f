"""The `pyfastvm` command line."""

from __future__ import annotations

import subprocess
import sys

from pyfastvm.guest.minimal_kernel import minimal_kernel

BOOT_TIMEOUT = 300.0


def test_the_cli_prints_the_output_and_exits_with_the_code() -> None:
    command = [sys.executable, "-m", "pyfastvm", "run", "--kernel", str(minimal_kernel())]
    command += ["--", "sh", "-c", "echo from-the-guest; exit 7"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BOOT_TIMEOUT)
    assert (done.returncode, done.stdout) == (7, "from-the-guest\n")
