"""Local APIC local-interrupt pins as a PC wires them (Intel SDM vol. 3A,
11.5.1 "Local Vector Table"): LINT0 takes the 8259 PIC's ExtINT, LINT1 NMI."""

from __future__ import annotations

from .._core import Vcpu

APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
DELIVERY_MODE_SHIFT = 8
DELIVERY_NMI = 0b100
DELIVERY_EXTINT = 0b111
DELIVERY_MODE_MASK = 0b111 << DELIVERY_MODE_SHIFT


def _with_delivery_mode(register: int, mode: int) -> int:
    return (register & ~DELIVERY_MODE_MASK) | mode << DELIVERY_MODE_SHIFT


def wire_local_interrupts(vcpu: Vcpu) -> None:
    """LINT0 delivers ExtINT and LINT1 NMI; needs the in-kernel irqchip."""
    page = bytearray(vcpu.get_lapic())
    for offset, mode in ((APIC_LVT_LINT0, DELIVERY_EXTINT), (APIC_LVT_LINT1, DELIVERY_NMI)):
        register = int.from_bytes(page[offset : offset + 4], "little")
        page[offset : offset + 4] = _with_delivery_mode(register, mode).to_bytes(4, "little")
    vcpu.set_lapic(bytes(page))
