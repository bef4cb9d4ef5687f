"""Devices on the PIO and MMIO buses, in Rust and in Python."""

import traceback

import pytest
from guests import (
    DEBUG_EXIT_PORT,
    LONG_DEBUG_EXIT_42,
    LONG_MMIO_READ_WRITE,
    LONG_REP_OUTSB,
    LONG_UNCLAIMED_IN,
    MMIO_BASE,
    REAL_MMIO_READ,
    REAL_REP_INSB,
    REAL_REP_OUTSB,
    SERIAL_PORT,
    Recorder,
    long_mode_vcpu,
    real_mode_vcpu,
)

import pyfastvm
from pyfastvm.devices import DebugExit, Sink

pytestmark = pytest.mark.hwkvm


def test_real_mode_guest_writes_a_string_to_a_python_device(vm: pyfastvm.Vm) -> None:
    serial = Recorder()
    vm.add_pio_device(SERIAL_PORT, 8, serial)
    vm.memory.write(0x1100, b"hi!\r\n")
    vcpu = real_mode_vcpu(vm, REAL_REP_OUTSB)
    assert vcpu.run().reason == "halted"
    assert serial.text == b"hi!\r\n"
    assert serial.writes[0] == (0, b"h")


@pytest.mark.parametrize("user", [False, True], ids=["cpl0", "cpl3"])
def test_long_mode_guest_writes_a_string_to_a_python_device(vm: pyfastvm.Vm, user: bool) -> None:
    serial = Recorder()
    vm.add_pio_device(SERIAL_PORT, 8, serial)
    vm.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit())
    vcpu = long_mode_vcpu(vm, LONG_REP_OUTSB, user=user)
    assert vcpu.get_sregs().cs.dpl == (3 if user else 0)
    assert vcpu.run().reason == "debug_exit"
    assert serial.text == b"hello"


def test_rep_insb_fills_guest_memory_from_a_python_device(vm: pyfastvm.Vm) -> None:
    vm.add_pio_device(SERIAL_PORT, 8, Recorder(answer=0x5A))
    vcpu = real_mode_vcpu(vm, REAL_REP_INSB)
    assert vcpu.run().reason == "halted"
    assert vm.memory.read(0x1200, 5) == b"\x5a\x5a\x5a\x5a\x00"


def test_mmio_read_reaches_a_guest_register(vm: pyfastvm.Vm) -> None:
    device = Recorder(answer=0x1122_3344_5566_7788)
    vm.add_mmio_device(MMIO_BASE, 0x1000, device)
    vcpu = long_mode_vcpu(vm, LONG_MMIO_READ_WRITE)
    assert vcpu.run().reason == "halted"
    assert vcpu.get_regs().rax == 0x1122_3344_5566_7788
    assert device.reads == [(0, 8)]
    assert device.writes == [(8, (0xCAFEF00D).to_bytes(4, "little"))]


def test_real_mode_mmio_read_below_1mib() -> None:
    vm = pyfastvm.Vm(512 << 10)
    vm.add_mmio_device(0xF0000, 0x100, Recorder(answer=0xDEADBEEF))
    vcpu = real_mode_vcpu(vm, REAL_MMIO_READ)
    assert vcpu.run().reason == "halted"
    assert vcpu.get_regs().rax & 0xFFFF_FFFF == 0xDEADBEEF


def test_debug_exit_ends_the_run_with_the_status(vm: pyfastvm.Vm) -> None:
    vm.add_pio_device(DEBUG_EXIT_PORT, 4, DebugExit())
    exit = long_mode_vcpu(vm, LONG_DEBUG_EXIT_42).run()
    assert (exit.reason, exit.status) == ("debug_exit", 42)


def test_rust_sink_reads_zero_and_accepts_writes(vm: pyfastvm.Vm) -> None:
    vm.add_mmio_device(MMIO_BASE, 0x1000, Sink())
    vcpu = long_mode_vcpu(vm, LONG_MMIO_READ_WRITE)
    vcpu.set_regs(pyfastvm.Regs(rax=0xFFFF, rip=vcpu.get_regs().rip, rflags=2))
    assert vcpu.run().reason == "halted"
    assert vcpu.get_regs().rax == 0
    assert Sink().read(0, 4) == bytes(4)


def test_unclaimed_access_names_the_address(vm: pyfastvm.Vm) -> None:
    vcpu = long_mode_vcpu(vm, LONG_UNCLAIMED_IN)
    with pytest.raises(pyfastvm.UnclaimedAccessError, match="read of 1 byte.*PIO address 0x1234"):
        vcpu.run()


def test_unclaimed_mmio_write_names_the_address(vm: pyfastvm.Vm) -> None:
    vm.add_mmio_device(MMIO_BASE, 8, Sink())  # the read is claimed, the write at +8 is not
    vcpu = long_mode_vcpu(vm, LONG_MMIO_READ_WRITE)
    with pytest.raises(
        pyfastvm.UnclaimedAccessError, match="write of 4 byte.*MMIO address 0xd0000008"
    ):
        vcpu.run()


def test_ignored_unclaimed_reads_return_all_ones() -> None:
    vm = pyfastvm.Vm(16 << 20, ignore_unclaimed=True)
    vcpu = long_mode_vcpu(vm, LONG_UNCLAIMED_IN)
    assert vcpu.run().reason == "halted"
    assert vcpu.get_regs().rax & 0xFF == 0xFF


def test_overlapping_range_names_both_devices(vm: pyfastvm.Vm) -> None:
    vm.add_pio_device(SERIAL_PORT, 8, Recorder())
    with pytest.raises(
        pyfastvm.BusConflictError,
        match=r'0x3fc-0x3ff for "Sink" overlaps 0x3f8-0x3ff held by "Recorder"',
    ):
        vm.add_pio_device(0x3FC, 4, Sink())
    with pytest.raises(pyfastvm.BusConflictError, match="overlaps"):
        vm.add_pio_device(0x3F0, 0x10, Sink())
    vm.add_pio_device(0x3F0, 8, Sink())  # adjacent ranges are fine
    vm.add_mmio_device(SERIAL_PORT, 8, Sink())  # the MMIO bus is separate


def test_bad_ranges_are_refused(vm: pyfastvm.Vm) -> None:
    with pytest.raises(pyfastvm.BusConflictError, match="empty"):
        vm.add_mmio_device(MMIO_BASE, 0, Sink())
    with pytest.raises(pyfastvm.BusConflictError, match="16-bit"):
        vm.add_pio_device(0xFFFF, 2, Sink())


def test_an_object_without_read_and_write_is_not_a_device(vm: pyfastvm.Vm) -> None:
    with pytest.raises(pyfastvm.DeviceError, match="str is not a device.*read"):
        vm.add_pio_device(SERIAL_PORT, 8, "serial")


class Exploding(pyfastvm.Device):
    def read(self, offset: int, size: int) -> bytes:
        raise RuntimeError(f"no reads at {offset}")

    def write(self, offset: int, data: bytes) -> None:
        raise ValueError(f"device refuses {data!r}")


def test_a_python_device_exception_propagates_with_its_traceback(vm: pyfastvm.Vm) -> None:
    vm.add_pio_device(SERIAL_PORT, 8, Exploding())
    vcpu = long_mode_vcpu(vm, LONG_REP_OUTSB)
    with pytest.raises(ValueError, match="device refuses b'h'") as caught:
        vcpu.run()
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert frames[-1].name == "write"


def test_a_python_device_returning_the_wrong_size_is_reported(vm: pyfastvm.Vm) -> None:
    class Short(Recorder):
        def read(self, offset: int, size: int) -> bytes:
            return b"\x01"

    vm.add_mmio_device(MMIO_BASE, 0x1000, Short())
    with pytest.raises(pyfastvm.DeviceError, match=r"Short.read\(0x0, 8\) returned 1 bytes"):
        long_mode_vcpu(vm, LONG_MMIO_READ_WRITE).run()
