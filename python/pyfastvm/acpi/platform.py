"""The ACPI tables of a pyfastvm micro-VM, built from its registered
devices: a hardware-reduced PC with one local APIC per vCPU, KVM's I/O APIC,
the PM timer and the sleep and reset registers in the FADT, and each
device's own terms in the DSDT (pyfastvm.description), laid out from one
base address in the BIOS area where guests without EFI search for the RSDP
(ACPI 6.5, 5.2.5.1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._core import DeviceInfo, PmTimer, PowerControl
from ..x86.interrupts import PIT_GSI, PIT_IRQ
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
class AcpiPlatform:
    """What the tables tell the guest about the machine: its vCPUs, its
    devices in registration order, and each one's DSDT terms."""

    cpu_count: int
    devices: Sequence[DeviceInfo]
    dsdt_terms: bytes

    def port_of(self, kind: str) -> int:
        """The base port of the one device of `kind` the FADT points at."""
        found = [info.base for info in self.devices if info.kind == kind]
        if len(found) != 1:
            raise ValueError(
                f"the FADT needs exactly one {kind} device, and the VM has {len(found)}: "
                "keep the default init chain's pm-timer and power-control steps"
            )
        return found[0]


@dataclass(frozen=True)
class AcpiTables:
    """The encoded tables: write `image` at `base`; the RSDP is its start."""

    base: int
    image: bytes
    addresses: dict[str, int]


def power_management(platform: AcpiPlatform) -> PowerManagement:
    port = platform.port_of("PowerControl")
    return PowerManagement(
        pm_timer=IoRegister(platform.port_of("PmTimer"), 8 * PmTimer.PORTS),
        sleep_control=IoRegister(port + PowerControl.SLEEP_CONTROL, 8),
        sleep_status=IoRegister(port + PowerControl.SLEEP_STATUS, 8),
        reset=IoRegister(port + PowerControl.RESET, 8),
        reset_value=PowerControl.RESET_VALUE,
    )


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
    dsdt_address = place("DSDT", dsdt(platform.dsdt_terms))
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
