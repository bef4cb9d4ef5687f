"""64-bit long mode for a vCPU, set up by the VMM (Intel SDM vol. 3A, 9.8.5
"Initializing IA-32e Mode"): a GDT, identity-mapped page tables, and the
control registers, so the guest starts executing 64-bit code directly.

The same layout serves the Linux 64-bit boot protocol, which wants
__BOOT_CS = 0x10 and __BOOT_DS = 0x18 (Documentation/arch/x86/boot.rst).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .._core import GuestMemory, Segment, Vcpu
from ..boot.layout import BOOT_GDT_ADDR as GDT_ADDRESS
from ..boot.layout import PD_ADDR as PD_ADDRESS
from ..boot.layout import PD_COUNT as IDENTITY_MAPPED_GIB
from ..boot.layout import PDPT_ADDR as PDPT_ADDRESS
from ..boot.layout import PML4_ADDR as PML4_ADDRESS

KERNEL_CODE_SELECTOR = 0x10
KERNEL_DATA_SELECTOR = 0x18
USER_DATA_SELECTOR = 0x20 | 3
USER_CODE_SELECTOR = 0x28 | 3

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
EFER_SCE, EFER_LME, EFER_LMA = 1, 1 << 8, 1 << 10
RFLAGS_RESERVED = 1 << 1
RFLAGS_IOPL3 = 3 << 12

PAGE_PRESENT, PAGE_WRITABLE, PAGE_USER, PAGE_SIZE_2M = 1, 1 << 1, 1 << 2, 1 << 7

# Segment types (SDM 3A, 3.4.5.1): execute/read code and read/write data, accessed.
CODE_TYPE, DATA_TYPE = 0xB, 0x3


@dataclass(frozen=True)
class SegmentSpec:
    """A flat 64-bit segment: the GDT entry and KVM's cached copy agree."""

    selector: int
    type: int
    dpl: int
    code: bool

    def descriptor(self) -> int:
        """The 8-byte GDT descriptor (SDM 3A, 3.4.5): base 0, limit 0xFFFFF, G=1."""
        access = self.type | 1 << 4 | self.dpl << 5 | 1 << 7  # S=1, P=1
        flags = (1 << 1 if self.code else 1 << 2) | 1 << 3  # L for code, D/B for data; G
        return 0xFFFF | access << 40 | 0xF << 48 | flags << 52

    def segment(self) -> Segment:
        return Segment(
            base=0,
            limit=0xFFFFFFFF,
            selector=self.selector,
            type=self.type,
            present=1,
            dpl=self.dpl,
            db=0 if self.code else 1,
            s=1,
            l=1 if self.code else 0,
            g=1,
        )


KERNEL_CODE = SegmentSpec(KERNEL_CODE_SELECTOR, CODE_TYPE, 0, code=True)
KERNEL_DATA = SegmentSpec(KERNEL_DATA_SELECTOR, DATA_TYPE, 0, code=False)
USER_DATA = SegmentSpec(USER_DATA_SELECTOR, DATA_TYPE, 3, code=False)
USER_CODE = SegmentSpec(USER_CODE_SELECTOR, CODE_TYPE, 3, code=True)
GDT = (KERNEL_CODE, KERNEL_DATA, USER_DATA, USER_CODE)


def write_gdt(memory: GuestMemory) -> int:
    """Writes the GDT at GDT_ADDRESS; returns its limit."""
    entries = [0] * (max(s.selector >> 3 for s in GDT) + 1)
    for spec in GDT:
        entries[spec.selector >> 3] = spec.descriptor()
    table = struct.pack(f"<{len(entries)}Q", *entries)
    memory.write(GDT_ADDRESS, table)
    return len(table) - 1


def write_identity_page_tables(memory: GuestMemory) -> int:
    """Identity-maps the first 4 GiB with 2 MiB pages (SDM 3A, 4.5), user
    accessible so CPL 3 code may run too; returns the CR3 value."""
    flags = PAGE_PRESENT | PAGE_WRITABLE | PAGE_USER
    memory.write(PML4_ADDRESS, struct.pack("<Q", PDPT_ADDRESS | flags))
    directories = [PD_ADDRESS + 0x1000 * i | flags for i in range(IDENTITY_MAPPED_GIB)]
    memory.write(PDPT_ADDRESS, struct.pack(f"<{IDENTITY_MAPPED_GIB}Q", *directories))
    pages = [(i << 21) | flags | PAGE_SIZE_2M for i in range(512 * IDENTITY_MAPPED_GIB)]
    memory.write(PD_ADDRESS, struct.pack(f"<{len(pages)}Q", *pages))
    return PML4_ADDRESS


def enter_long_mode(vcpu: Vcpu, memory: GuestMemory, *, user: bool = False) -> None:
    """Puts `vcpu` in 64-bit mode at CPL 0, or CPL 3 with `user` (IOPL 3, so
    port I/O works there too). RIP and RSP are left to the caller."""
    sregs = vcpu.get_sregs()
    sregs.gdt.base = GDT_ADDRESS
    sregs.gdt.limit = write_gdt(memory)
    sregs.cr3 = write_identity_page_tables(memory)
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
    sregs.efer = EFER_SCE | EFER_LME | EFER_LMA
    code, data = (USER_CODE, USER_DATA) if user else (KERNEL_CODE, KERNEL_DATA)
    sregs.cs = code.segment()
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(sregs, name, data.segment())
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rflags = RFLAGS_RESERVED | (RFLAGS_IOPL3 if user else 0)
    vcpu.set_regs(regs)
