"""ACPI system description tables, encoded as ACPI 6.5 chapter 5.2 lays them
out. Every table starts with the common header and sums to zero."""

from __future__ import annotations

import struct
from dataclasses import dataclass

OEM_ID = b"PYFVM "
OEM_TABLE_ID = b"PYFASTVM"
OEM_REVISION = 1
CREATOR_ID = b"PYFV"
CREATOR_REVISION = 1

# 5.2.6 System Description Table Header.
HEADER = struct.Struct("<4sIBB6s8sI4sI")
CHECKSUM_OFFSET = 9


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes `data` sum to zero modulo 256."""
    return -sum(data) & 0xFF


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: the header, then `body`, checksummed."""
    length = HEADER.size + len(body)
    header = HEADER.pack(
        signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, OEM_REVISION,
        CREATOR_ID, CREATOR_REVISION,
    )  # fmt: skip
    data = bytearray(header + body)
    data[CHECKSUM_OFFSET] = checksum(data)
    return bytes(data)


# 5.2.5.3 Root System Description Pointer: revision 2 has both table pointers.
RSDP = struct.Struct("<8sB6sBIIQB3x")
RSDP_V1_LENGTH = 20


def rsdp(rsdt_address: int, xsdt_address: int) -> bytes:
    data = bytearray(RSDP.pack(b"RSD PTR ", 0, OEM_ID, 2, rsdt_address, RSDP.size, xsdt_address, 0))
    data[8] = checksum(data[:RSDP_V1_LENGTH])
    data[32] = checksum(data)
    return bytes(data)


def rsdt(addresses: list[int]) -> bytes:
    """5.2.7: 32-bit table pointers, for guests that walk only the RSDT."""
    return table(b"RSDT", 1, struct.pack(f"<{len(addresses)}I", *addresses))


def xsdt(addresses: list[int]) -> bytes:
    """5.2.8: 64-bit table pointers."""
    return table(b"XSDT", 1, struct.pack(f"<{len(addresses)}Q", *addresses))


def dsdt(aml: bytes) -> bytes:
    """5.2.11.1: revision 2 makes AML integers 64-bit."""
    return table(b"DSDT", 2, aml)


# 5.2.3.2 Generic Address Structure.
GAS = struct.Struct("<BBBBQ")
SYSTEM_IO = 1
ACCESS_SIZE = {8: 1, 16: 2, 32: 3, 64: 4}  # register width in bits -> access size code


@dataclass(frozen=True)
class IoRegister:
    """An I/O-port register as a Generic Address Structure describes it."""

    port: int
    bits: int

    def encode(self) -> bytes:
        return GAS.pack(SYSTEM_IO, self.bits, 0, ACCESS_SIZE[self.bits], self.port)


NO_REGISTER = bytes(GAS.size)

# 5.2.9 FADT, table 5.9: IA-PC boot architecture and feature flags.
BOOT_ARCH_LEGACY_DEVICES = 1 << 0
BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2
BOOT_ARCH_MSI_NOT_SUPPORTED = 1 << 3
BOOT_ARCH_CMOS_RTC_NOT_PRESENT = 1 << 5
FLAG_PWR_BUTTON = 1 << 4  # no fixed-feature power button
FLAG_SLP_BUTTON = 1 << 5  # no fixed-feature sleep button
FLAG_RESET_REG_SUP = 1 << 10
FLAG_HW_REDUCED_ACPI = 1 << 20
FADT_REVISION, FADT_MINOR_REVISION = 6, 5
# From FIRMWARE_CTRL to the end of the legacy block lengths (offsets 36..96).
FADT_LEGACY = struct.Struct("<IIBBHIBBBBIIIIIIIIBBBBBBBB")
# From P_LVL2_LAT to FADT Minor Version (offsets 96..132).
FADT_MIDDLE = struct.Struct("<HHHHBBBBBHBI12sBHB")


@dataclass(frozen=True)
class PowerManagement:
    """Where the guest finds the ACPI registers of a hardware-reduced platform."""

    pm_timer: IoRegister
    sleep_control: IoRegister
    sleep_status: IoRegister
    reset: IoRegister
    reset_value: int


def fadt(dsdt_address: int, pm: PowerManagement, *, boot_arch: int) -> bytes:
    """A hardware-reduced FADT (4.1 "Hardware-Reduced ACPI"): no PM1 or GPE
    blocks and no SCI; sleep, reset and the PM timer through registers."""
    legacy = FADT_LEGACY.pack(
        0, dsdt_address, 0, 0, 0, 0, 0, 0, 0, 0,  # FIRMWARE_CTRL .. PSTATE_CNT
        0, 0, 0, 0, 0, pm.pm_timer.port, 0, 0,  # PM1a_EVT_BLK .. GPE1_BLK
        0, 0, 0, pm.pm_timer.bits // 8, 0, 0, 0, 0,  # PM1_EVT_LEN .. CST_CNT
    )  # fmt: skip
    flags = FLAG_PWR_BUTTON | FLAG_SLP_BUTTON | FLAG_RESET_REG_SUP | FLAG_HW_REDUCED_ACPI
    middle = FADT_MIDDLE.pack(
        0, 0, 0, 0, 0, 0, 0, 0, 0,  # P_LVL2_LAT .. CENTURY
        boot_arch, 0, flags, pm.reset.encode(), pm.reset_value, 0, FADT_MINOR_REVISION,
    )  # fmt: skip
    extended = struct.pack("<QQ", 0, dsdt_address)  # X_FIRMWARE_CTRL, X_DSDT
    blocks = [NO_REGISTER] * 5 + [pm.pm_timer.encode()] + [NO_REGISTER] * 2
    sleep = pm.sleep_control.encode() + pm.sleep_status.encode()
    hypervisor_vendor = bytes(8)
    body = legacy + middle + extended + b"".join(blocks) + sleep + hypervisor_vendor
    return table(b"FACP", FADT_REVISION, body)


# 5.2.12 MADT and its interrupt controller structures.
LOCAL_APIC_ADDRESS = 0xFEE0_0000
MADT_PCAT_COMPAT = 1  # the 8259 PICs are there too (KVM's in-kernel irqchip)
LOCAL_APIC = struct.Struct("<BBBBI")  # 5.2.12.2
IO_APIC = struct.Struct("<BBBBII")  # 5.2.12.3
INTERRUPT_OVERRIDE = struct.Struct("<BBBBIH")  # 5.2.12.5
LOCAL_APIC_NMI = struct.Struct("<BBBHB")  # 5.2.12.7
LOCAL_APIC_ENABLED = 1
ISA_BUS = 0
ALL_PROCESSORS = 0xFF
LINT1 = 1
# MPS INTI flags: polarity in bits 0-1, trigger mode in bits 2-3.
ACTIVE_HIGH, ACTIVE_LOW, EDGE, LEVEL = 0b01, 0b11, 0b01 << 2, 0b11 << 2


@dataclass(frozen=True)
class InterruptOverride:
    """An ISA IRQ wired to another GSI or with non-ISA polarity/trigger."""

    irq: int
    gsi: int
    flags: int


def madt(
    apic_ids: list[int],
    *,
    io_apic_id: int,
    io_apic_address: int,
    overrides: list[InterruptOverride],
) -> bytes:
    """Processor UID i is the processor with APIC id apic_ids[i]."""
    entries = [
        LOCAL_APIC.pack(0, LOCAL_APIC.size, uid, apic_id, LOCAL_APIC_ENABLED)
        for uid, apic_id in enumerate(apic_ids)
    ]
    entries.append(IO_APIC.pack(1, IO_APIC.size, io_apic_id, 0, io_apic_address, 0))
    entries += [
        INTERRUPT_OVERRIDE.pack(2, INTERRUPT_OVERRIDE.size, ISA_BUS, o.irq, o.gsi, o.flags)
        for o in overrides
    ]
    entries.append(LOCAL_APIC_NMI.pack(4, LOCAL_APIC_NMI.size, ALL_PROCESSORS, 0, LINT1))
    header = struct.pack("<II", LOCAL_APIC_ADDRESS, MADT_PCAT_COMPAT)
    return table(b"APIC", 5, header + b"".join(entries))
