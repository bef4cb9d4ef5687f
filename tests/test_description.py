"""The machine description generated from the device registry: each device's
DSDT terms and kernel arguments, gathered by the firmware-level "acpi" step
after every device step, so a device added the documented way is in it."""

from __future__ import annotations

import pytest
from guests import Recorder

import pyfastvm
from pyfastvm.acpi import aml
from pyfastvm.builder import default_init_chain
from pyfastvm.description import DeviceDescription, describe
from pyfastvm.guest.minimal_kernel import minimal_kernel


class Thermometer(Recorder):
    """A Python device that describes itself to the guest."""

    def describe(self, info: pyfastvm.DeviceInfo) -> DeviceDescription:
        resources = aml.resource_template(aml.io_port(info.base, info.length))
        device = aml.device("THRM", aml.name("_HID", aml.string("PYFV0001")),
                            aml.name("_CRS", resources))  # fmt: skip
        return DeviceDescription(aml.scope("\\_SB", device), ("thermometer.port=0x700",))


def built(*devices: pyfastvm.DeviceSpec) -> pyfastvm.MicroVM:
    """A MicroVM whose init chain ran (its devices, tables and kernel are in
    place), not started."""
    config = pyfastvm.VMConfig(kernel=minimal_kernel(), devices=list(devices))
    machine = pyfastvm.MicroVM(config)
    machine.chain.run(machine.context)
    return machine


def test_the_firmware_step_runs_after_every_device_step() -> None:
    steps = default_init_chain().steps()
    last_device_step = max(i for i, (level, _) in enumerate(steps) if level == "dev")
    assert steps.index(("firmware", "acpi")) > last_device_step


def test_every_device_has_an_id_range_and_interrupt() -> None:
    machine = built()
    try:
        devices = {info.id: info for info in machine.context.vm.devices}
        assert list(devices) == ["com1", "i8042", "pm-timer", "power-control"]
        com1 = devices["com1"]
        assert (com1.kind, com1.space, com1.base, com1.length, com1.gsi) == (
            "Serial", "pio", 0x3F8, 8, 4)  # fmt: skip
        assert com1.device is machine.context.serial
    finally:
        machine.close()


def test_a_python_device_describes_itself_into_the_dsdt_and_command_line() -> None:
    spec = pyfastvm.DeviceSpec("pio", 0x700, 4, Thermometer(), id="thermometer")
    machine = built(spec)
    try:
        acpi = machine.context.acpi
        assert acpi is not None
        assert b"THRM" in acpi.image and b"PYFV0001" in acpi.image
        assert "thermometer.port=0x700" in machine.context.device_kernel_args
        assert "thermometer.port=0x700" in machine.context.cmdline
    finally:
        machine.close()


def test_built_in_devices_bring_their_kernel_arguments() -> None:
    machine = built()
    try:
        args = machine.context.device_kernel_args
        assert "console=ttyS0" in args  # the serial port at COM1's address
        assert "reboot=acpi" in args  # the ACPI reset register
        assert "i8042.dumbkbd" in args
    finally:
        machine.close()


def test_a_describe_that_returns_something_else_is_refused() -> None:
    class Confused(Recorder):
        def describe(self, info: pyfastvm.DeviceInfo) -> str:
            return "a thermometer"

    vm = pyfastvm.Vm(16 << 20)
    info = vm.add_pio_device(0x700, 1, Confused())
    with pytest.raises(TypeError, match="returned str, not a pyfastvm.description"):
        describe(info)
