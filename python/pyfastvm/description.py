"""What each device tells the guest about itself: its part of the ACPI DSDT
and the kernel command-line arguments it needs. The firmware step gathers
them from `vm.devices`, so a device added in the documented way (an init
step in the "dev" level) appears in the machine description.

A Python device describes itself with a ``describe(info)`` method (see
`pyfastvm.Device`); the built-in Rust devices are described here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._core import DeviceInfo, PowerControl, Serial
from .acpi import aml

SERIAL_HID = "PNP0501"  # 16550A-compatible COM port
# The PC's COM ports, by I/O port: Linux numbers its ttyS consoles so.
COM_PORTS = {0x3F8: 0, 0x2F8: 1, 0x3E8: 2, 0x2E8: 3}
# pyfastvm's i8042 only takes the reset command: nothing to probe behind it.
I8042_ARGS = ("i8042.noaux", "i8042.nomux", "i8042.dumbkbd")
# A panic resets through the FADT's reset register. Without reboot= a kernel
# built with EFI support picks an EFI reboot on a hardware-reduced ACPI
# machine and, finding no EFI, jumps to a BIOS reset vector a micro-VM lacks.
POWER_CONTROL_ARGS = ("reboot=acpi",)
# What Linux's virtio_mmio driver matches in ACPI (drivers/virtio/virtio_mmio.c).
VIRTIO_MMIO_HID = "LNRO0005"
VIRTIO_KINDS = ("VirtioBlk", "VirtioRng", "VirtioVsock")


@dataclass(frozen=True)
class DeviceDescription:
    """A device's AML terms for the DSDT (at its root: a device goes in a
    Scope) and its kernel arguments."""

    aml: bytes = b""
    kernel_args: tuple[str, ...] = ()


def describe(info: DeviceInfo) -> DeviceDescription:
    """The description of one registered device (empty for one without any)."""
    own = getattr(info.device, "describe", None)
    if callable(own):
        description = own(info)
        if not isinstance(description, DeviceDescription):
            raise TypeError(
                f"{info.kind}.describe() returned {type(description).__name__}, "
                "not a pyfastvm.description.DeviceDescription"
            )
        return description
    builtin = BUILTIN_DESCRIPTIONS.get(info.kind)
    return builtin(info) if builtin is not None else DeviceDescription()


def serial_description(info: DeviceInfo) -> DeviceDescription:
    """A COM port in \\_SB (PNP0501, its ports and IRQ); at a PC COM address
    it is also the kernel's console."""
    number = COM_PORTS.get(info.base)
    uid = (number if number is not None else len(COM_PORTS)) + 1
    resources = [aml.io_port(info.base, Serial.PORTS)]
    if info.gsi is not None:
        resources.append(aml.irq(info.gsi))
    port = aml.device(
        f"COM{uid}",
        aml.name("_HID", aml.eisa_id(SERIAL_HID)),
        aml.name("_UID", aml.integer(uid)),
        aml.name("_CRS", aml.resource_template(*resources)),
    )
    console = (f"console=ttyS{number}",) if number is not None else ()
    return DeviceDescription(aml.scope("\\_SB", port), console)


def power_control_description(info: DeviceInfo) -> DeviceDescription:
    """\\_S5, the sleep type that powers off through the sleep registers the
    FADT points at."""
    s5 = PowerControl.S5_SLEEP_TYPE
    soft_off = aml.name("\\_S5", aml.package(*map(aml.integer, (s5, s5, 0, 0))))
    return DeviceDescription(soft_off, POWER_CONTROL_ARGS)


def i8042_description(info: DeviceInfo) -> DeviceDescription:
    return DeviceDescription(kernel_args=I8042_ARGS)


def virtio_mmio_description(info: DeviceInfo) -> DeviceDescription:
    """A virtio-mmio device in \\_SB: LNRO0005 with its MMIO window and its
    interrupt, edge-triggered and active high as KVM's irqfd pulses it (the
    stock kernel has no command-line virtio-mmio devices, so this is how it
    finds them). Named after its window, so every name is unique."""
    if info.gsi is None:
        raise ValueError(
            f"virtio device {info.id} has no interrupt line: add it with gsi=vm.allocate_gsi()"
        )
    uid = (info.base >> 12) & 0xFFF
    virtio = aml.device(
        f"V{uid:03X}",
        aml.name("_HID", aml.string(VIRTIO_MMIO_HID)),
        aml.name("_UID", aml.integer(uid)),
        aml.name(
            "_CRS",
            aml.resource_template(
                aml.memory32_fixed(info.base, info.length), aml.extended_interrupt(info.gsi)
            ),
        ),
    )
    return DeviceDescription(aml.scope("\\_SB", virtio))


BUILTIN_DESCRIPTIONS: dict[str, Callable[[DeviceInfo], DeviceDescription]] = {
    "Serial": serial_description,
    "PowerControl": power_control_description,
    "I8042": i8042_description,
    **dict.fromkeys(VIRTIO_KINDS, virtio_mmio_description),
}
