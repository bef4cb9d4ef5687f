"""SMP and ACPI power management on real Linux boots: N vCPUs found through
the MADT and brought up by INIT/SIPI, and the VM ended by the FADT's reset
and sleep registers. Boots use the minimal test kernel (every boot is slow
on KVM-on-PVM hosts); its ACPI support is built in as in the stock kernel."""

from __future__ import annotations

import gc
import time

import pytest
from boot_timeouts import MINIMAL_BOOT_TIMEOUT
from kernel_log import ACPI_COMPLAINTS, cpus_brought_up
from process_resources import open_fds, os_threads, os_threads_after_exits

import pyfastvm
from pyfastvm.guest.console_protocol import INIT_MILESTONE, new_nonce
from pyfastvm.guest.debian import busybox_static
from pyfastvm.guest.initramfs import build_initramfs
from pyfastvm.guest.minimal_kernel import minimal_kernel
from pyfastvm.host import is_pvm_host
from pyfastvm.microvm import MicroVM

pytestmark = pytest.mark.hwkvm

NO_INIT = "rdinit=/none init=/none"


# Eight vCPUs on a 2-core PVM host ran past MINIMAL_BOOT_TIMEOUT (an AMD host, in
# CI): every CPU's kernel code runs through the emulator there.
EIGHT_ON_PVM = pytest.mark.skipif(
    is_pvm_host(),
    reason="8 vCPUs boot in over 10 minutes on a 2-core KVM-on-PVM host; the lane runs this",
)


@pytest.mark.parametrize(
    ("vcpus", "cmdline"),
    [
        (4, NO_INIT),
        pytest.param(8, NO_INIT, marks=EIGHT_ON_PVM),
        (2, f"{NO_INIT} idle=poll"),
    ],
    ids=["4", "8", "2-others-spinning"],
)
def test_n_vcpus_come_up_and_a_panic_resets_through_the_fadt(vcpus: int, cmdline: str) -> None:
    """A kernel with no init panics after bringing up its CPUs; with panic=-1
    it resets at once through the FADT's reset register, and the VM ends
    with every vCPU thread joined, also while the other CPUs spin in their
    idle loop (idle=poll) instead of halting."""
    threads = os_threads()
    config = pyfastvm.VMConfig(kernel=minimal_kernel(), vcpus=vcpus, cmdline=cmdline)
    with MicroVM(config) as vm:
        assert vm.wait(timeout=MINIMAL_BOOT_TIMEOUT) == "reset"
        assert vm.stopped_by == "power-control"
    console = vm.console
    assert cpus_brought_up(console) == vcpus
    assert "ACPI: PM-Timer IO Port: 0x608" in console
    assert "Kernel panic - not syncing" in console
    assert not ACPI_COMPLAINTS.findall(console), console
    assert os_threads_after_exits(threads) == threads


@pytest.mark.parametrize("vcpus", [1, 4])
def test_repeated_starts_and_teardowns_leak_nothing(vcpus: int) -> None:
    config = pyfastvm.VMConfig(kernel=minimal_kernel(), vcpus=vcpus)

    def start_and_stop() -> None:
        with MicroVM(config):
            time.sleep(0.2)  # the vCPU threads and the console thread are running

    start_and_stop()
    gc.collect()
    fds, threads = open_fds(), os_threads()
    for _ in range(5):
        start_and_stop()
    gc.collect()
    assert open_fds() == fds
    assert os_threads_after_exits(threads) == threads


@pytest.mark.parametrize("vcpus", [1, 2, 4])
def test_nproc_sees_every_vcpu_and_the_harness_powers_off(vcpus: int) -> None:
    """Every vCPU found through the MADT and brought up, with no ACPI
    complaint on the way, and the guest's `poweroff -f` ends the VM."""
    result = pyfastvm.run(
        ["nproc"], kernel=minimal_kernel(), vcpus=vcpus, timeout=MINIMAL_BOOT_TIMEOUT
    )
    assert (result.exit_code, result.stdout) == (0, f"{vcpus}\n".encode())
    assert result.stop_reason == "poweroff"
    assert cpus_brought_up(result.console) == vcpus
    assert not ACPI_COMPLAINTS.findall(result.console), result.console


@pytest.mark.parametrize(("command", "reason"), [("poweroff", "poweroff"), ("reboot", "reset")])
def test_poweroff_and_reboot_end_the_vm_with_their_reason(command: str, reason: str) -> None:
    initramfs = build_initramfs([command, "-f"], nonce=new_nonce(), busybox=busybox_static())
    config = pyfastvm.VMConfig(kernel=minimal_kernel(), vcpus=2)
    with MicroVM(config, initrd_overlay=initramfs) as vm:
        assert vm.wait(timeout=MINIMAL_BOOT_TIMEOUT) == reason
        assert vm.stopped_by == "power-control"
    assert INIT_MILESTONE in vm.console  # complete once the console thread is joined
