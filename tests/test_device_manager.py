"""The VM's device registry: ids, ranges on the PIO and MMIO buses,
interrupt lines, MMIO windows and GSIs allocated on request, and exits that
name the device by its id (rust/src/device_manager.rs)."""

from __future__ import annotations

import itertools
import os

import pytest
from guests import DEBUG_EXIT_PORT, LONG_DEBUG_EXIT_42, Recorder, long_mode_vcpu

import pyfastvm
from pyfastvm.devices import DebugExit, Sink

pytestmark = pytest.mark.hwkvm

MMIO_WINDOWS = (0xC000_0000, 0xFEC0_0000)  # the hole below the I/O APIC
FIRST_FREE_GSI, LAST_GSI = 5, 23


def test_devices_are_listed_in_order_with_their_resources(vm: pyfastvm.Vm) -> None:
    recorder = Recorder()
    vm.add_pio_device(0x80, 1, Sink())
    vm.add_pio_device(0x3F8, 8, recorder, id="uart", gsi=4)
    info = vm.add_mmio_device(0xD000_0000, 0x1000, Sink())
    assert (info.id, info.kind, info.space, info.base, info.length, info.gsi) == (
        "Sink-2", "Sink", "mmio", 0xD000_0000, 0x1000, None)  # fmt: skip
    assert [(d.id, d.kind) for d in vm.devices] == [
        ("Sink", "Sink"), ("uart", "Recorder"), ("Sink-2", "Sink")]  # fmt: skip
    assert vm.devices[1].device is recorder and vm.devices[1].gsi == 4


def test_ids_are_unique(vm: pyfastvm.Vm) -> None:
    vm.add_pio_device(0x80, 1, Sink(), id="port80")
    with pytest.raises(pyfastvm.InvalidArgumentError, match='"port80" is not'):
        vm.add_pio_device(0x81, 1, Sink(), id="port80")


def test_the_device_that_ends_a_run_is_named_by_its_id(vm: pyfastvm.Vm) -> None:
    vm.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit(), id="test-exit")
    exit = long_mode_vcpu(vm, LONG_DEBUG_EXIT_42).run()
    assert (exit.reason, exit.status, exit.device) == ("debug_exit", 42, "test-exit")
    assert exit.reason == pyfastvm.ExitReason.DEBUG_EXIT


def test_mmio_windows_are_allocated_in_the_hole_around_fixed_ranges(vm: pyfastvm.Vm) -> None:
    fixed = vm.add_mmio_device(MMIO_WINDOWS[0], 0x10, Sink())
    first = vm.add_mmio_device(None, 0x200, Sink())
    second = vm.add_mmio_device(None, 0x200, Sink())
    for window in (first, second):
        assert MMIO_WINDOWS[0] <= window.base < MMIO_WINDOWS[1] and window.base % 0x1000 == 0
    ranges = sorted((d.base, d.base + d.length) for d in (fixed, first, second))
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(ranges))


def test_gsis_are_allocated_from_the_free_pins(vm: pyfastvm.Vm) -> None:
    vm.add_pio_device(0x80, 1, Sink(), gsi=FIRST_FREE_GSI)
    allocated = [vm.allocate_gsi() for _ in range(FIRST_FREE_GSI + 1, LAST_GSI + 1)]
    assert allocated == list(range(FIRST_FREE_GSI + 1, LAST_GSI + 1))
    with pytest.raises(pyfastvm.InvalidArgumentError, match="no free interrupt line"):
        vm.allocate_gsi()


def test_a_device_interrupt_is_connected_to_its_gsi() -> None:
    """KVM_IRQFD refuses what is not an eventfd: the VM does try to connect
    a device's irq_fd to the GSI it is registered with."""
    vm = pyfastvm.Vm(16 << 20)
    vm.create_irqchip()

    class NotAnEventfd(Recorder):
        irq_fd = os.open("/dev/null", os.O_RDONLY)

    try:
        with pytest.raises(pyfastvm.KvmError, match="KVM_IRQFD"):
            vm.add_pio_device(0x80, 1, NotAnEventfd(), gsi=FIRST_FREE_GSI)
        serial = pyfastvm.devices.Serial()
        vm.add_pio_device(0x3F8, 8, serial, gsi=4)  # a real eventfd: accepted
    finally:
        os.close(NotAnEventfd.irq_fd)
