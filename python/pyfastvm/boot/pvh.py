"""PVH boot: struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .e820 import E820Entry
from .errors import BootError
from .layout import PVH_AREA_END, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR, PVH_START_INFO_ADDR
from .plan import Region, Segment

HVM_START_MAGIC_VALUE = 0x336EC578
HVM_START_INFO_VERSION = 1  # version 1 adds memmap_paddr and memmap_entries

# magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr, rsdp_paddr,
# memmap_paddr, memmap_entries, reserved
HVM_START_INFO = struct.Struct("<IIIIQQQQII")
# paddr, size, cmdline_paddr, reserved
HVM_MODLIST_ENTRY = struct.Struct("<QQQQ")
# addr, size, type, reserved
HVM_MEMMAP_TABLE_ENTRY = struct.Struct("<QQII")


def build_start_info(
    *, cmdline_addr: int, modules: Sequence[Region], e820: Sequence[E820Entry]
) -> tuple[Segment, ...]:
    """hvm_start_info at PVH_START_INFO_ADDR plus its module list and memory map.

    The guest enters with EBX = PVH_START_INFO_ADDR. rsdp_paddr is 0: the
    guest then looks for the ACPI RSDP in the BIOS area itself.
    """
    modlist = b"".join(HVM_MODLIST_ENTRY.pack(m.start, m.size, 0, 0) for m in modules)
    memmap = b"".join(HVM_MEMMAP_TABLE_ENTRY.pack(e.addr, e.size, e.type, 0) for e in e820)
    _check_fits(modlist, memmap)
    info = HVM_START_INFO.pack(
        HVM_START_MAGIC_VALUE,
        HVM_START_INFO_VERSION,
        0,
        len(modules),
        PVH_MODLIST_ADDR if modules else 0,
        cmdline_addr,
        0,
        PVH_MEMMAP_ADDR,
        len(e820),
        0,
    )
    segments = [Segment(PVH_START_INFO_ADDR, info, "hvm_start_info")]
    if modlist:
        segments.append(Segment(PVH_MODLIST_ADDR, modlist, "hvm_modlist"))
    segments.append(Segment(PVH_MEMMAP_ADDR, memmap, "hvm_memmap"))
    return tuple(segments)


def _check_fits(modlist: bytes, memmap: bytes) -> None:
    if PVH_MODLIST_ADDR + len(modlist) > PVH_MEMMAP_ADDR:
        raise BootError(f"{len(modlist)} bytes of PVH module list overflow their slot")
    if PVH_MEMMAP_ADDR + len(memmap) > PVH_AREA_END:
        raise BootError(f"{len(memmap)} bytes of PVH memory map overflow their slot")
