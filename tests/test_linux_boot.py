"""Booting real Linux kernels: Debian's stock cloud kernel once, and the
minimal test kernel (pyfastvm.guest.minimal_kernel) for the rest, since every
boot is slow on KVM-on-PVM hosts, where guest kernel code runs through KVM's
instruction emulator."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kernel_log import ACPI_COMPLAINTS, cpus_brought_up

import pyfastvm
from pyfastvm.boot import GuestMemoryTooSmallError, KernelFormatError
from pyfastvm.config import ConfigError, VMConfig
from pyfastvm.guest.debian import debian_kernel, debian_kernel_release
from pyfastvm.guest.minimal_kernel import minimal_kernel
from pyfastvm.host import is_pvm_host
from pyfastvm.init_chain import InitStepError
from pyfastvm.machine import MicroVM

PVM = is_pvm_host()
needs_guest_user_space = pytest.mark.skipif(
    PVM,
    reason="KVM on PVM (no VMX/SVM): a SYSCALL from guest user mode never reaches the "
    "guest kernel, so guest user space cannot run on this host",
)
# The stock kernel needs minutes of guest time to reach its init under KVM's
# instruction emulator on a PVM host; a fraction of a second on hardware KVM.
STOCK_BOOT_TIMEOUT = 1500.0
MINIMAL_BOOT_TIMEOUT = 300.0


@pytest.mark.slow
@pytest.mark.hwkvm
def test_stock_kernel_boots_to_init_as_a_kvm_guest() -> None:
    """Boots Debian's cloud kernel with 2 vCPUs, which it finds only through
    ACPI, to its init; on a PVM host, run() then reports the host limitation
    instead of hanging."""
    console: list[bytes] = []
    boot = functools.partial(
        pyfastvm.run, ["true"], vcpus=2, timeout=STOCK_BOOT_TIMEOUT, console=console.append
    )
    if PVM:
        with pytest.raises(pyfastvm.HostLimitationError, match="KVM on PVM"):
            boot()
    else:
        assert boot().exit_code == 0
    log = b"".join(console).decode(errors="replace")
    assert "Hypervisor detected: KVM" in log
    assert "clocksource: Switched to clocksource kvm-clock" in log
    assert cpus_brought_up(log) == 2
    assert not ACPI_COMPLAINTS.findall(log), log
    assert "Run /init as init process" in log


@pytest.mark.hwkvm
@needs_guest_user_space
def test_uname_comes_back_with_the_kernel_release() -> None:
    result = pyfastvm.run(["uname", "-r"], timeout=120)
    assert (result.exit_code, result.stdout) == (0, f"{debian_kernel_release()}\n".encode())
    assert result.boot_time > 0 and "Run /init as init process" in result.console


@pytest.mark.hwkvm
@needs_guest_user_space
def test_the_exit_code_comes_back() -> None:
    assert pyfastvm.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=120).exit_code == 3


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


def test_a_guest_that_never_ends_times_out_and_is_torn_down() -> None:
    threads = threading.active_count()
    with pytest.raises(pyfastvm.GuestTimeoutError, match="still running after 3"):
        pyfastvm.run(["sleep", "1000"], kernel=minimal_kernel(), timeout=3, cmdline="panic=0")
    assert threading.active_count() == threads


@pytest.mark.hwkvm
def test_the_minimal_kernel_boots_to_init() -> None:
    """On a PVM host the init dies at its first system call, and run() says
    why; on hardware KVM the command runs."""
    if PVM:
        with pytest.raises(pyfastvm.HostLimitationError, match="guest user space cannot run"):
            pyfastvm.run(["true"], kernel=minimal_kernel(), timeout=MINIMAL_BOOT_TIMEOUT)
    else:
        result = pyfastvm.run(["echo", "hi"], kernel=minimal_kernel(), timeout=MINIMAL_BOOT_TIMEOUT)
        assert (result.exit_code, result.stdout) == (0, b"hi\n")
        assert "Run /init as init process" in result.console


def test_a_kernel_panic_raises_with_the_panic_text() -> None:
    no_init = "rdinit=/none init=/none"
    with pytest.raises(pyfastvm.GuestPanicError, match="panicked: Kernel panic") as caught:
        pyfastvm.run(
            ["true"], kernel=minimal_kernel(), cmdline=no_init, timeout=MINIMAL_BOOT_TIMEOUT
        )
    assert (
        caught.value.panic == "Kernel panic - not syncing: Requested init /none failed (error -2)."
    )


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


@pytest.mark.hwkvm
def test_the_cli_prints_the_output_and_exits_with_the_code() -> None:
    command = [sys.executable, "-m", "pyfastvm", "run", "--kernel", str(minimal_kernel())]
    command += ["--", "sh", "-c", "echo from-the-guest; exit 7"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=MINIMAL_BOOT_TIMEOUT)
    if PVM:
        assert done.returncode == 125
        assert "pyfastvm: " in done.stderr and "KVM on PVM" in done.stderr
    else:
        assert (done.returncode, done.stdout) == (7, "from-the-guest\n")
