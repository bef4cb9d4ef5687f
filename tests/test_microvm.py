"""MicroVM: a Linux guest built by the init chain, started, watched through
its console, paused and resumed, and always torn down; bad kernels, initrds
and memory sizes refused before the guest runs."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from boot_timeouts import MINIMAL_BOOT_TIMEOUT

import pyfastvm
from pyfastvm.boot import GuestMemoryTooSmallError, KernelFormatError
from pyfastvm.config import ConfigError, VMConfig
from pyfastvm.guest.console_protocol import new_nonce
from pyfastvm.guest.debian import debian_kernel
from pyfastvm.guest.initramfs import build_initramfs
from pyfastvm.guest.minimal_kernel import minimal_kernel
from pyfastvm.init_chain import InitStepError
from pyfastvm.microvm import MicroVM


def test_a_text_file_is_not_a_kernel(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a kernel\n" * 100)
    with pytest.raises(InitStepError, match="kernel.*not a Linux kernel") as caught:
        MicroVM(VMConfig(kernel=text)).start()
    assert isinstance(caught.value.__cause__, KernelFormatError)


def test_too_little_memory_for_the_kernel_says_how_much_is_needed() -> None:
    with pytest.raises(InitStepError, match=r"the VM has 8 MiB.*at least \d+ MiB") as caught:
        MicroVM(VMConfig(kernel=debian_kernel(), memory="8M")).start()
    assert isinstance(caught.value.__cause__, GuestMemoryTooSmallError)


def test_a_missing_initrd_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="initrd.*does not exist"):
        VMConfig(kernel=debian_kernel(), initrd=tmp_path / "missing.cpio")


def test_a_timeout_says_where_the_guest_was() -> None:
    with MicroVM(VMConfig(kernel=minimal_kernel())) as vm:
        vm.wait_for("Linux version", timeout=MINIMAL_BOOT_TIMEOUT)
        with pytest.raises(pyfastvm.GuestTimeoutError, match="still running after 0.1 s") as caught:
            vm.wait(timeout=0.1)
    where = str(caught.value).split("Last console lines:\n")[1]
    assert where.splitlines()[-1] in vm.console and "Linux version" in vm.console


@pytest.mark.hwkvm
def test_microvm_streams_the_console_and_waits_for_text(tmp_path: Path) -> None:
    chunks: list[bytes] = []
    log_file = tmp_path / "console.log"
    config = VMConfig(kernel=minimal_kernel())
    with log_file.open("wb") as sink, MicroVM(config, console=sink) as vm:
        seconds = vm.wait_for("Linux version", timeout=MINIMAL_BOOT_TIMEOUT)
        assert seconds > 0 and "Linux version" in vm.console
        assert vm.stop_reason is None
        chunks.append(vm.console.encode())
    assert vm.stop_reason == "stopped"
    assert log_file.read_bytes().startswith(chunks[0][:100])
    with pytest.raises(pyfastvm.VmmError, match="stopped"):
        vm.wait_for("never printed", timeout=1)


# Prints a tick on the console every 0.2 s, from a guest user process.
TICKER = "i=0; while true; do i=$((i+1)); echo tick-$i > /dev/console; sleep 0.2; done"


@pytest.mark.hwkvm
def test_a_paused_guest_holds_still_until_resumed() -> None:
    """pause() parks every vCPU (here two) at a clean point: the guest prints
    nothing meanwhile, and after resume() it goes on ticking; a paused guest
    closes cleanly."""
    overlay = build_initramfs(["sh", "-c", TICKER], nonce=new_nonce())
    config = VMConfig(kernel=minimal_kernel(), vcpus=2)
    with MicroVM(config, initrd_overlay=overlay) as vm:
        vm.wait_for("tick-2", timeout=MINIMAL_BOOT_TIMEOUT)
        vm.pause()
        assert vm.paused
        console = vm.console
        time.sleep(1.5)  # seven ticks' worth
        assert vm.console == console
        vm.resume()
        ticks = int(re.findall(r"tick-(\d+)", console)[-1])
        vm.wait_for(f"tick-{ticks + 2}", timeout=MINIMAL_BOOT_TIMEOUT)
        assert not vm.paused and vm.stop_reason is None
        vm.pause()  # and closed while paused
    assert (vm.stop_reason, vm.error) == ("stopped", None)
    with pytest.raises(pyfastvm.VmmError, match="not running"):
        vm.pause()
