"""Guest physical memory layout for booting a kernel: every fixed address.

All guest-physical addresses that the boot code (and the VMM core's long-mode
setup) uses are defined here, so their order can be checked at a glance::

    0x0000_0000  real-mode IVT and BIOS data area (left zero)
    0x0000_0500  boot GDT                            (VMM core, x86/long_mode.py)
    0x0000_6000  PVH hvm_start_info, modlist, memmap
    0x0000_7000  zero page, struct boot_params
    0x0000_9000  PML4, PDPT, 4 page directories      (VMM core, x86/long_mode.py)
    0x0002_0000  kernel command line
    0x0009_fc00  EBDA                    (e820 reserved)
    0x000a_0000  legacy VGA and ROM hole (not RAM in e820)
    0x000e_0000  BIOS area: ACPI tables  (e820 reserved)
    0x0010_0000  bzImage protected-mode code (1 MiB)
    0xc000_0000  32-bit MMIO hole, up to 4 GiB
    0x1_0000_0000  RAM above 3 GiB continues here

The VMM core maps guest RAM as [0, min(size, 3 GiB)) and, when the VM has
more than 3 GiB, as [4 GiB, 4 GiB + size - 3 GiB).
"""

from __future__ import annotations

from itertools import pairwise

from pyfastvm import _core

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
PAGE_SIZE = 4 * KIB

# Structures the VMM core writes before the first KVM_RUN (long-mode entry).
BOOT_GDT_ADDR = 0x500
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000
PD_COUNT = 4  # 4 page directories of 2 MiB pages identity-map 4 GiB
PAGE_TABLES_END = PD_ADDR + PD_COUNT * PAGE_SIZE

# PVH: struct hvm_start_info and the two arrays it points to.
PVH_START_INFO_ADDR = 0x6000
PVH_MODLIST_ADDR = 0x6040
PVH_MEMMAP_ADDR = 0x6080
PVH_AREA_END = 0x7000

# Linux boot protocol: zero page and command line.
ZERO_PAGE_ADDR = 0x7000
ZERO_PAGE_SIZE = 0x1000
CMDLINE_ADDR = 0x20000

# Legacy PC areas below 1 MiB.
EBDA_START = 0x9FC00
LEGACY_HOLE_START = 0xA0000
BIOS_AREA_START = 0xE0000  # where guests without EFI look for the ACPI RSDP
ACPI_TABLES_ADDR = BIOS_AREA_START
HIGH_MEMORY_START = 0x100000  # 1 MiB

CMDLINE_CAPACITY = EBDA_START - CMDLINE_ADDR

# bzImage protected-mode code is loaded at 1 MiB (LOADED_HIGH).
BZIMAGE_LOAD_ADDR = HIGH_MEMORY_START

# 32-bit PCI MMIO hole: RAM stops at 3 GiB and resumes at 4 GiB (the core's layout).
MMIO_HOLE_START = _core.MMIO_HOLE_START
MMIO_HOLE_END = _core.MMIO_HOLE_END


def low_ram_end(memory_size: int) -> int:
    """End of the RAM range that starts at guest-physical 0."""
    return ram_ranges(memory_size)[0][1]


def ram_ranges(memory_size: int) -> tuple[tuple[int, int], ...]:
    """The [start, end) ranges of guest RAM, as the VMM core maps them."""
    return tuple((start, start + length) for start, length in _core.ram_layout(memory_size))


def align_up(value: int, alignment: int) -> int:
    """Round value up to a multiple of alignment (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)


def align_down(value: int, alignment: int) -> int:
    """Round value down to a multiple of alignment (a power of two)."""
    return value & ~(alignment - 1)


def _check_order() -> None:
    """Fail at import if someone moves an area onto its neighbour."""
    areas = [
        (BOOT_GDT_ADDR, PVH_START_INFO_ADDR),
        (PVH_START_INFO_ADDR, PVH_AREA_END),
        (ZERO_PAGE_ADDR, ZERO_PAGE_ADDR + ZERO_PAGE_SIZE),
        (PML4_ADDR, PAGE_TABLES_END),
        (CMDLINE_ADDR, EBDA_START),
    ]
    for (_, end), (start, _) in pairwise(areas):
        if end > start:
            raise AssertionError(f"boot layout overlap at {start:#x}")


_check_order()
