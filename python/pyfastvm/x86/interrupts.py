"""How a PC wires its interrupt lines to KVM's in-kernel 8259 PICs and I/O
APIC, and the one exception the MADT then states: the PIT's ISA IRQ 0 is on
I/O APIC pin 2 (ACPI 6.5, 5.2.12.5 "Interrupt Source Override Structure")."""

from __future__ import annotations

ISA_IRQS = 16
IO_APIC_PINS = 24
PIC_CASCADE_PIN = 2
PIT_IRQ, PIT_GSI = 0, 2


def pc_gsi_routes() -> list[tuple[int, str, int]]:
    """KVM routes as (gsi, chip, pin): ISA IRQs 0-7 on the master PIC (but for
    its cascade pin), 8-15 on the slave, and GSI n on I/O APIC pin n, except
    that IRQ 0 takes pin 2 and so GSI 2 goes nowhere."""
    pic = [
        (irq, "pic_master" if irq < 8 else "pic_slave", irq % 8)
        for irq in range(ISA_IRQS)
        if irq != PIC_CASCADE_PIN
    ]
    io_apic = [(PIT_IRQ, "ioapic", PIT_GSI)]
    io_apic += [
        (gsi, "ioapic", gsi) for gsi in range(IO_APIC_PINS) if gsi not in (PIT_IRQ, PIT_GSI)
    ]
    return pic + io_apic
