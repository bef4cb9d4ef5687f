"""ACPI tables read back from guest memory the way a guest without EFI finds
them (the RSDP in 0xE0000-0xFFFFF, then the RSDT or XSDT), and the PM timer,
sleep and reset registers they point at, driven by real guests."""

from __future__ import annotations

import struct
import time

import pytest
from guests import DEBUG_EXIT_PORT, real_mode_vcpu

import pyfastvm
from pyfastvm.acpi import aml
from pyfastvm.builder import (
    COM1_IRQ,
    COM1_PORT,
    BuildContext,
    add_acpi_devices,
    add_i8042,
    add_serial,
    create_irqchip,
    create_vm,
    describe_machine,
)
from pyfastvm.devices import DebugExit, PmTimer, PowerControl

BIOS_AREA = (0xE0000, 0x100000)
HEADER = struct.Struct("<4sIBB6s8sI4sI")
GAS = struct.Struct("<BBBBQ")
HW_REDUCED_ACPI, RESET_REG_SUP = 1 << 20, 1 << 10
I8042_PRESENT, CMOS_RTC_NOT_PRESENT = 1 << 1, 1 << 5  # IA-PC boot architecture flags
SYSTEM_IO = 1


def find_rsdp(vm: pyfastvm.Vm) -> bytes:
    """Scans the BIOS area on 16-byte boundaries, as Linux and ACPICA do."""
    start, end = BIOS_AREA
    area = vm.memory.read(start, end - start)
    for offset in range(0, len(area), 16):
        candidate = area[offset : offset + 36]
        if candidate[:8] == b"RSD PTR " and sum(candidate[:20]) % 256 == 0:
            return candidate
    raise AssertionError("no RSDP in the BIOS area")


def read_table(vm: pyfastvm.Vm, address: int) -> tuple[bytes, bytes]:
    """(signature, whole table), after checking its length and checksum."""
    header = HEADER.unpack(vm.memory.read(address, HEADER.size))
    signature, length = header[0], header[1]
    assert length >= HEADER.size, signature
    data = vm.memory.read(address, length)
    assert sum(data) % 256 == 0, f"{signature!r} checksum"
    return signature, data


def pointers(data: bytes, width: int) -> list[int]:
    body = data[HEADER.size :]
    assert len(body) % width == 0
    return list(struct.unpack(f"<{len(body) // width}{'I' if width == 4 else 'Q'}", body))


def machine(vcpus: int) -> BuildContext:
    """The default machine up to its firmware level: devices and tables."""
    ctx = BuildContext(pyfastvm.VMConfig(vcpus=vcpus))
    for step in (create_vm, create_irqchip, add_serial, add_i8042, add_acpi_devices):
        step(ctx)
    describe_machine(ctx)
    return ctx


@pytest.fixture(scope="module")
def tables() -> dict[bytes, bytes]:
    """Every table of a 4-vCPU machine, reached through the RSDT."""
    vm = machine(4).vm
    rsdp = find_rsdp(vm)
    assert sum(rsdp) % 256 == 0, "extended checksum"
    _, revision, rsdt_address, length, xsdt_address = struct.unpack("<9x6sBIIQ", rsdp[:32])
    assert (revision, length) == (2, 36)
    rsdt_signature, rsdt = read_table(vm, rsdt_address)
    xsdt_signature, xsdt = read_table(vm, xsdt_address)
    assert (rsdt_signature, xsdt_signature) == (b"RSDT", b"XSDT")
    assert pointers(rsdt, 4) == pointers(xsdt, 8), "the RSDT and XSDT list the same tables"
    found = dict(read_table(vm, address) for address in pointers(rsdt, 4))
    fadt = found[b"FACP"]
    dsdt_address, x_dsdt_address = struct.unpack_from("<I", fadt, 40)[0], fadt[140:148]
    assert struct.unpack("<Q", x_dsdt_address)[0] == dsdt_address
    signature, found[b"DSDT"] = read_table(vm, dsdt_address)
    assert signature == b"DSDT"
    return found


def test_the_root_tables_list_the_fadt_and_madt(tables: dict[bytes, bytes]) -> None:
    assert set(tables) == {b"FACP", b"APIC", b"DSDT"}


def gas(fadt: bytes, offset: int) -> tuple[int, int, int, int, int]:
    return GAS.unpack_from(fadt, offset)


def test_fadt_is_hardware_reduced_with_timer_sleep_and_reset(tables: dict[bytes, bytes]) -> None:
    fadt = tables[b"FACP"]
    assert len(fadt) == 276 and fadt[8] == 6  # ACPI 6.x FADT
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & HW_REDUCED_ACPI and flags & RESET_REG_SUP
    boot_arch = struct.unpack_from("<H", fadt, 109)[0]
    assert boot_arch & CMOS_RTC_NOT_PRESENT and not boot_arch & I8042_PRESENT
    pm_timer = gas(fadt, 208)
    assert pm_timer == (SYSTEM_IO, 32, 0, 3, pm_timer[4])
    assert struct.unpack_from("<IB", fadt, 76)[0] == pm_timer[4]  # legacy PM_TMR_BLK agrees
    sleep_control, sleep_status, reset = gas(fadt, 244), gas(fadt, 256), gas(fadt, 116)
    base = sleep_control[4] - PowerControl.SLEEP_CONTROL
    assert sleep_control == (SYSTEM_IO, 8, 0, 1, base + PowerControl.SLEEP_CONTROL)
    assert sleep_status == (SYSTEM_IO, 8, 0, 1, base + PowerControl.SLEEP_STATUS)
    assert reset == (SYSTEM_IO, 8, 0, 1, base + PowerControl.RESET)
    assert fadt[128] == PowerControl.RESET_VALUE


def madt_entries(madt: bytes) -> list[tuple[int, bytes]]:
    entries, offset = [], HEADER.size + 8
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        assert length >= 2
        entries.append((kind, madt[offset : offset + length]))
        offset += length
    assert offset == len(madt), "the entries fill the table exactly"
    return entries


def test_madt_has_a_local_apic_per_vcpu_the_io_apic_and_overrides(
    tables: dict[bytes, bytes],
) -> None:
    madt = tables[b"APIC"]
    assert struct.unpack_from("<II", madt, HEADER.size) == (0xFEE0_0000, 1)
    entries = madt_entries(madt)
    local_apics = [struct.unpack("<xxBBI", e) for kind, e in entries if kind == 0]
    assert local_apics == [(uid, uid, 1) for uid in range(4)]  # UID, APIC id, enabled
    io_apics = [struct.unpack("<xxBxII", e) for kind, e in entries if kind == 1]
    assert io_apics == [(0, 0xFEC0_0000, 0)]
    overrides = [struct.unpack("<xxBBIH", e) for kind, e in entries if kind == 2]
    assert overrides == [(0, 0, 2, 0)]  # ISA IRQ 0 (the PIT) on GSI 2
    nmis = [struct.unpack("<xxBHB", e) for kind, e in entries if kind == 4]
    assert nmis == [(0xFF, 0, 1)]  # every processor's LINT1


def test_dsdt_has_the_serial_port_and_soft_off(tables: dict[bytes, bytes]) -> None:
    dsdt = tables[b"DSDT"]
    s5 = PowerControl.S5_SLEEP_TYPE
    # Name(\_S5, Package(4){S5, S5, 0, 0})
    assert bytes([0x08, 0x5C]) + b"_S5_" + bytes([0x12, 0x08, 4, 0x0A, s5, 0x0A, s5, 0, 0]) in dsdt
    assert b"COM1" in dsdt and struct.pack("<I", 0x0105D041) in dsdt  # EISAID("PNP0501")
    # IO(Decode16, 0x3F8, 0x3F8, 1, 8) and IRQNoFlags(){4}
    assert struct.pack("<BBHHBB", 0x47, 1, COM1_PORT, COM1_PORT, 1, 8) in dsdt
    assert struct.pack("<BH", 0x22, 1 << COM1_IRQ) in dsdt


@pytest.mark.parametrize(
    ("length", "encoded"),
    [(0x3E, b"\x3f"), (0x3F, b"\x41\x04"), (0xFFD, b"\x4f\xff"), (0xFFE, b"\x81\x00\x01")],
)
def test_aml_package_lengths_count_their_own_bytes(length: int, encoded: bytes) -> None:
    assert aml.pkg_length(length) == encoded


def test_aml_rejects_bad_names_and_ids() -> None:
    with pytest.raises(ValueError, match="name segment"):
        aml.name_string("\\_SB.TOOLONG")
    with pytest.raises(ValueError, match="EISA id"):
        aml.eisa_id("pnp0501")


def test_pm_timer_counts_at_3_579545_mhz() -> None:
    timer = PmTimer()

    def count() -> int:
        return int.from_bytes(timer.read(0, 4), "little")

    before, first = time.monotonic(), count()
    time.sleep(0.05)
    second, after = count(), time.monotonic()
    ticks = (second - first) % (1 << 24)
    assert 0.05 * PmTimer.FREQUENCY <= ticks <= (after - before) * PmTimer.FREQUENCY + 1


def out_byte(port: int, value: int) -> bytes:
    """mov dx, port; mov al, value; out dx, al"""
    return struct.pack("<BHBBB", 0xBA, port, 0xB0, value, 0xEE)


def fadt_ports(ctx: BuildContext) -> tuple[int, int]:
    """The sleep control and reset ports, as the guest reads them from the FADT."""
    assert ctx.acpi is not None
    _, fadt = read_table(ctx.vm, ctx.acpi.addresses["FACP"])
    return gas(fadt, 244)[4], gas(fadt, 116)[4]


S5_ENTRY = PowerControl.S5_SLEEP_TYPE << 2 | 1 << 5  # SLP_TYP = S5, SLP_EN


@pytest.mark.parametrize("register", ["sleep_control", "reset"])
def test_a_guest_writing_the_fadt_registers_ends_the_vm(register: str) -> None:
    ctx = machine(1)
    sleep_control, reset = fadt_ports(ctx)
    code = (
        out_byte(sleep_control, S5_ENTRY)
        if register == "sleep_control"
        else out_byte(reset, PowerControl.RESET_VALUE)
    )
    exit = real_mode_vcpu(ctx.vm, code).run()
    expected = "poweroff" if register == "sleep_control" else "reset"
    assert (exit.reason, exit.device) == (expected, "power-control")


def test_other_sleep_states_and_values_do_not_end_the_vm() -> None:
    ctx = machine(1)
    ctx.vm.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit())
    sleep_control, reset = fadt_ports(ctx)
    code = out_byte(sleep_control, 3 << 2 | 1 << 5)  # S3
    code += out_byte(sleep_control, PowerControl.S5_SLEEP_TYPE << 2)  # S5 without SLP_EN
    code += out_byte(reset, PowerControl.RESET_VALUE + 1)
    code += out_byte(DEBUG_EXIT_PORT, 7)
    exit = real_mode_vcpu(ctx.vm, code).run()
    assert (exit.reason, exit.status) == ("debug_exit", 7)


def test_gsi_routing_names_its_interrupt_controllers() -> None:
    vm = pyfastvm.Vm(16 << 20)
    vm.create_irqchip()
    with pytest.raises(pyfastvm.InvalidArgumentError, match='unknown interrupt controller "apic"'):
        vm.set_gsi_routing([(0, "apic", 2)])
