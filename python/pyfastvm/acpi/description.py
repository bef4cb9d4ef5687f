"""The ACPI description of a pyfastvm micro-VM: a hardware-reduced PC with
one local APIC per vCPU, KVM's I/O APIC, serial ports, the PM timer and the
sleep and reset registers, laid out from one base address in the BIOS area
where guests without EFI search for the RSDP (ACPI 6.5, 5.2.5.1)."""

from __future__ import annotations

from dataclasses import dataclass

from .._core import PmTimer, PowerControl, Serial
from ..x86.interrupts import PIT_GSI, PIT_IRQ
from . import aml
from .tables import (
    BOOT_ARCH_CMOS_RTC_NOT_PRESENT,
    BOOT_ARCH_LEGACY_DEVICES,
    BOOT_ARCH_MSI_NOT_SUPPORTED,
    BOOT_ARCH_VGA_NOT_PRESENT,
    RSDP,
    InterruptOverride,
    IoRegister,
    PowerManagement,
    dsdt,
    fadt,
    madt,
    rsdp,
    rsdt,
    xsdt,
)

IO_APIC_ID = 0
IO_APIC_ADDRESS = 0xFEC0_0000
TABLE_ALIGNMENT = 16  # the RSDP must be on a 16-byte boundary
SERIAL_HID = "PNP0501"  # 16550A-compatible COM port
# A PC with ISA-style devices (the COM port) but no VGA, MSI or CMOS RTC, and
# no 8042 keyboard controller to probe: pyfastvm's i8042 only takes the reset
# command, which the kernel sends without probing.
BOOT_ARCH = (
    BOOT_ARCH_LEGACY_DEVICES
    | BOOT_ARCH_VGA_NOT_PRESENT
    | BOOT_ARCH_MSI_NOT_SUPPORTED
    | BOOT_ARCH_CMOS_RTC_NOT_PRESENT
)


@dataclass(frozen=True)
class SerialPort:
    port: int
    irq: int


@dataclass(frozen=True)
class AcpiPlatform:
    """What the tables tell the guest about the machine."""

    cpu_count: int
    pm_timer_port: int
    power_control_port: int
    serial_ports: tuple[SerialPort, ...] = ()


@dataclass(frozen=True)
class AcpiTables:
    """The encoded tables: write `image` at `base`; the RSDP is its start."""

    base: int
    image: bytes
    addresses: dict[str, int]


def power_management(platform: AcpiPlatform) -> PowerManagement:
    port = platform.power_control_port
    return PowerManagement(
        pm_timer=IoRegister(platform.pm_timer_port, 8 * PmTimer.PORTS),
        sleep_control=IoRegister(port + PowerControl.SLEEP_CONTROL, 8),
        sleep_status=IoRegister(port + PowerControl.SLEEP_STATUS, 8),
        reset=IoRegister(port + PowerControl.RESET, 8),
        reset_value=PowerControl.RESET_VALUE,
    )


def differentiated_definitions(platform: AcpiPlatform) -> bytes:
    """The DSDT's AML: the serial ports under \\_SB, and \\_S5 for power-off."""
    ports = [
        aml.device(
            f"COM{uid}",
            aml.name("_HID", aml.eisa_id(SERIAL_HID)),
            aml.name("_UID", aml.integer(uid)),
            aml.name(
                "_CRS", aml.resource_template(aml.io_port(s.port, Serial.PORTS), aml.irq(s.irq))
            ),
        )
        for uid, s in enumerate(platform.serial_ports, start=1)
    ]
    s5 = PowerControl.S5_SLEEP_TYPE
    soft_off = aml.name("\\_S5", aml.package(*map(aml.integer, (s5, s5, 0, 0))))
    return aml.scope("\\_SB", *ports) + soft_off


def build_acpi_tables(platform: AcpiPlatform, base: int) -> AcpiTables:
    """RSDP, DSDT, FADT, MADT, RSDT and XSDT, in that order from `base`."""
    image = bytearray()
    addresses: dict[str, int] = {}

    def place(signature: str, data: bytes) -> int:
        image.extend(bytes(-len(image) % TABLE_ALIGNMENT))
        addresses[signature] = base + len(image)
        image.extend(data)
        return addresses[signature]

    image.extend(bytes(RSDP.size))  # filled in once the root tables are placed
    addresses["RSDP"] = base
    dsdt_address = place("DSDT", dsdt(differentiated_definitions(platform)))
    tables = [
        place("FACP", fadt(dsdt_address, power_management(platform), boot_arch=BOOT_ARCH)),
        place("APIC", madt(
            list(range(platform.cpu_count)),
            io_apic_id=IO_APIC_ID,
            io_apic_address=IO_APIC_ADDRESS,
            overrides=[InterruptOverride(PIT_IRQ, PIT_GSI, 0)],
        )),
    ]  # fmt: skip
    root = rsdp(place("RSDT", rsdt(tables)), place("XSDT", xsdt(tables)))
    image[: RSDP.size] = root
    return AcpiTables(base, bytes(image), addresses)
