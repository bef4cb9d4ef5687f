"""pyfastvm.run: boot a real Linux kernel, run a command, get its output and
exit code back, on the minimal test kernel (pyfastvm.guest.minimal_kernel)
or this host's default kernel, since every boot is slow on KVM-on-PVM
hosts, where guest kernel code runs through KVM's instruction emulator
(test_stock_kernel boots Debian's kernel once)."""

from __future__ import annotations

import functools
import re
import shutil

import pytest
from boot_timeouts import MINIMAL_BOOT_TIMEOUT
from process_resources import os_threads, os_threads_after_exits

import pyfastvm
from pyfastvm.guest.minimal_kernel import minimal_kernel
from pyfastvm.host import host_profile
from pyfastvm.ready_snapshots import snapshot_path


@pytest.mark.hwkvm
def test_uname_comes_back_with_the_kernel_release() -> None:
    """On this host's default kernel: the release the kernel announced at boot."""
    result = pyfastvm.run(["uname", "-r"], timeout=MINIMAL_BOOT_TIMEOUT)
    announced = re.search(r"Linux version (\S+)", result.console)
    assert announced is not None
    assert (result.exit_code, result.stdout) == (0, f"{announced[1]}\n".encode())
    assert result.boot_time > 0 and "Run /init as init process" in result.console


@pytest.mark.hwkvm
def test_the_exit_code_and_output_come_back_apart_from_the_kernel_log() -> None:
    """stdout and stderr, in order; the kernel's lines (printed meanwhile
    with `loglevel` raised by the kmsg write) stay in the console."""
    command = "echo out; echo err >&2; echo kernel-line > /dev/kmsg; exit 3"
    result = pyfastvm.run(["sh", "-c", command], timeout=MINIMAL_BOOT_TIMEOUT, snapshot=True)
    assert (result.exit_code, result.stdout) == (3, b"out\nerr\n")
    assert "kernel-line" in result.console


@pytest.mark.hwkvm
def test_the_minimal_kernel_runs_a_command() -> None:
    result = pyfastvm.run(["echo", "hi"], kernel=minimal_kernel(), timeout=MINIMAL_BOOT_TIMEOUT)
    assert (result.exit_code, result.stdout) == (0, b"hi\n")
    assert "Run /init as init process" in result.console


@pytest.mark.hwkvm
def test_a_kernel_panic_raises_with_the_panic_text() -> None:
    # A directory of the initramfs: accessible, so the kernel execs it (and
    # fails) rather than go looking for a root block device.
    no_init = "rdinit=/tmp init=/tmp"
    with pytest.raises(pyfastvm.GuestPanicError, match="panicked: Kernel panic") as caught:
        pyfastvm.run(
            ["true"], kernel=minimal_kernel(), cmdline=no_init, timeout=MINIMAL_BOOT_TIMEOUT
        )
    assert (
        caught.value.panic == "Kernel panic - not syncing: Requested init /tmp failed (error -13)."
    )


def test_a_guest_that_never_ends_times_out_and_is_torn_down() -> None:
    threads = os_threads()
    with pytest.raises(pyfastvm.GuestTimeoutError, match="still running after 3") as caught:
        pyfastvm.run(["sleep", "1000"], kernel=minimal_kernel(), timeout=3, cmdline="panic=0")
    assert os_threads_after_exits(threads) == threads
    assert "Last console lines:" in str(caught.value)
    if host_profile().is_pvm:  # 3 s is not enough to boot there
        assert "give it a longer timeout" in str(caught.value)


@pytest.mark.hwkvm
def test_a_ready_snapshot_answers_later_runs_without_booting() -> None:
    """snapshot=True: the first run boots and keeps the waiting guest in the
    cache; the next restores it and runs its own command there. Its memory
    size is its own, so the cache entry it clears holds no other test's
    ready guest (test_cli's and the exit-code test's share the default)."""
    config = pyfastvm.VMConfig(kernel=minimal_kernel(), memory="192M")
    shutil.rmtree(snapshot_path(config), ignore_errors=True)
    run = functools.partial(
        pyfastvm.run,
        kernel=config.kernel,
        memory=config.memory,
        snapshot=True,
        timeout=MINIMAL_BOOT_TIMEOUT,
    )
    first = run(["echo", "first"])
    second = run(["sh", "-c", "echo second; exit 4"])
    assert (first.restored, first.exit_code, first.stdout) == (False, 0, b"first\n")
    assert (second.restored, second.exit_code, second.stdout) == (True, 4, b"second\n")
    assert second.stop_reason == "poweroff"
