"""The PC devices built into the core: the 16550A UART and the i8042 reset,
with the in-kernel interrupt controllers and PIT."""

import os
import select

import pytest
from guests import (
    DEBUG_EXIT_PORT,
    LONG_I8042_RESET,
    LONG_SERIAL_ECHO,
    SERIAL_PORT,
    long_mode_vcpu,
)

import pyfastvm
from pyfastvm.devices import I8042, DebugExit, Serial

pytestmark = pytest.mark.hwkvm

COM1_IRQ = 4


@pytest.fixture
def pc() -> pyfastvm.Vm:
    vm = pyfastvm.Vm(16 << 20)
    vm.create_irqchip()
    vm.create_pit()
    return vm


def test_serial_output_reaches_python_and_input_reaches_the_guest(pc: pyfastvm.Vm) -> None:
    serial = Serial()
    pc.add_pio_device(SERIAL_PORT, 8, serial)
    pc.register_irqfd(serial.irq_fd, COM1_IRQ)
    pc.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit())
    assert serial.write_input(b"x") == 1
    exit = long_mode_vcpu(pc, LONG_SERIAL_ECHO).run()
    assert (exit.reason, exit.status) == ("debug_exit", ord("x"))
    readable, _, _ = select.select([serial.output_fd], [], [], 0)
    assert readable == [serial.output_fd]
    assert serial.read_output() == b"hi"
    assert serial.read_output() == b""
    assert select.select([serial.output_fd], [], [], 0)[0] == []


def test_i8042_reset_ends_the_run_with_reset(pc: pyfastvm.Vm) -> None:
    pc.add_pio_device(0x60, 5, I8042())
    assert long_mode_vcpu(pc, LONG_I8042_RESET).run().reason == "reset"


def test_irqfd_needs_an_eventfd(pc: pyfastvm.Vm) -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(pyfastvm.KvmError, match="KVM_IRQFD"):
            pc.register_irqfd(read_end, COM1_IRQ)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_lapic_and_translation(pc: pyfastvm.Vm) -> None:
    vcpu = long_mode_vcpu(pc, LONG_I8042_RESET)
    lapic = bytearray(vcpu.get_lapic())
    assert len(lapic) == 1024
    lapic[0x350:0x354] = (0x700).to_bytes(4, "little")  # LVT LINT0: ExtINT
    vcpu.set_lapic(bytes(lapic))
    assert vcpu.get_lapic()[0x350:0x354] == (0x700).to_bytes(4, "little")
    assert vcpu.translate(0x10000) == 0x10000  # identity-mapped
    assert vcpu.translate(0x7F00_0000_0000) is None
