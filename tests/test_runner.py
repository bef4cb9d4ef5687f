"""pyfastvm.run: boot a real Linux kernel, run a command, get its output and
exit code back. Debian's stock cloud kernel once (marked slow); the minimal
test kernel (pyfastvm.guest.minimal_kernel) or this host's default kernel
for the rest, since every boot is slow on KVM-on-PVM hosts, where guest
kernel code runs through KVM's instruction emulator."""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path

import pytest
from kernel_log import ACPI_COMPLAINTS, VIRTIO_ERRORS, cpus_brought_up, virtio_disks
from process_resources import os_threads, os_threads_after_exits

import pyfastvm
from pyfastvm.guest.debian import debian_kernel, debian_kernel_release
from pyfastvm.guest.minimal_kernel import minimal_kernel
from pyfastvm.host import host_profile
from pyfastvm.ready_snapshots import snapshot_path

# The stock kernel needs minutes of guest time to reach its init under KVM's
# instruction emulator on a PVM host; a fraction of a second on hardware KVM.
STOCK_BOOT_TIMEOUT = 1500.0
MINIMAL_BOOT_TIMEOUT = 300.0


@pytest.mark.slow
@pytest.mark.hwkvm
def test_stock_kernel_runs_a_command_as_a_kvm_guest(tmp_path: Path) -> None:
    """Boots Debian's cloud kernel with 2 vCPUs, which it finds only through
    ACPI, and runs `uname -r` in it. The same boot has a virtio disk, vsock
    and entropy device, which it finds through the DSDT once the initramfs
    has loaded virtio_mmio and their drivers (test_virtio_linux uses them on
    this host's default kernel)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    # /dev/hwrng serves bytes only from a registered RNG, and this kernel has
    # no other than virtio-rng. (Its sysfs rng_current once failed to open
    # here, ENOENT, on a PVM host; the same boot passed again with it.)
    command = "uname -r; head -c 16 /dev/hwrng | wc -c; ls /dev/vsock"
    result = pyfastvm.run(
        ["sh", "-c", command],
        kernel=debian_kernel(),
        vcpus=2,
        timeout=STOCK_BOOT_TIMEOUT,
        disks=[pyfastvm.Disk(disk, read_only=True)],
        vsock=pyfastvm.Vsock(tmp_path / "v.sock"),
        rng=True,
    )
    expected = f"{debian_kernel_release()}\n16\n/dev/vsock\n"
    assert (result.exit_code, result.stdout) == (0, expected.encode())
    log = result.console
    assert virtio_disks(log) == {"vda": 2048}
    assert not VIRTIO_ERRORS.findall(log), log
    assert "Hypervisor detected: KVM" in log
    assert "clocksource: Switched to clocksource kvm-clock" in log
    assert cpus_brought_up(log) == 2
    assert not ACPI_COMPLAINTS.findall(log), log
    assert "Run /init as init process" in log


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
    cache; the next restores it and runs its own command there."""
    kernel = minimal_kernel()
    shutil.rmtree(snapshot_path(pyfastvm.VMConfig(kernel=kernel)), ignore_errors=True)
    run = functools.partial(
        pyfastvm.run, kernel=kernel, snapshot=True, timeout=MINIMAL_BOOT_TIMEOUT
    )
    first = run(["echo", "first"])
    second = run(["sh", "-c", "echo second; exit 4"])
    assert (first.restored, first.exit_code, first.stdout) == (False, 0, b"first\n")
    assert (second.restored, second.exit_code, second.stdout) == (True, 4, b"second\n")
    assert second.stop_reason == "poweroff"
