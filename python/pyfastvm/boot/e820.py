"""The BIOS e820 memory map the guest kernel is given."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from .errors import GuestMemoryTooSmallError, mib
from .layout import (
    BIOS_AREA_START,
    EBDA_START,
    HIGH_MEMORY_START,
    LEGACY_HOLE_START,
    MIB,
    ram_ranges,
)

# struct boot_e820_entry: u64 addr, u64 size, u32 type, packed (20 bytes).
E820_ENTRY = struct.Struct("<QQI")

# Smallest VM: 1 MiB of legacy area plus 1 MiB of RAM above it.
MIN_MEMORY_SIZE = HIGH_MEMORY_START + MIB


class E820Type(IntEnum):
    """Address range types (ACPI spec, 'System Address Map Interfaces')."""

    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5


@dataclass(frozen=True)
class E820Entry:
    """One range of the memory map."""

    addr: int
    size: int
    type: E820Type

    @property
    def end(self) -> int:
        return self.addr + self.size


def build_e820(memory_size: int, *, bios_area: bool = True) -> tuple[E820Entry, ...]:
    """The memory map of a VM with ``memory_size`` bytes of RAM, sorted.

    RAM below the EBDA, the EBDA reserved, the legacy hole 0xA0000-0xFFFFF
    left out (the BIOS area at its top reserved if ``bios_area``), RAM from
    1 MiB to min(size, 3 GiB), and RAM from 4 GiB for the rest.
    """
    _check_memory_size(memory_size)
    entries = [
        E820Entry(0, EBDA_START, E820Type.RAM),
        E820Entry(EBDA_START, LEGACY_HOLE_START - EBDA_START, E820Type.RESERVED),
    ]
    if bios_area:
        entries.append(
            E820Entry(BIOS_AREA_START, HIGH_MEMORY_START - BIOS_AREA_START, E820Type.RESERVED)
        )
    for start, end in ram_ranges(memory_size):
        start = max(start, HIGH_MEMORY_START)
        entries.append(E820Entry(start, end - start, E820Type.RAM))
    return tuple(entries)


def pack_e820(entries: Iterable[E820Entry]) -> bytes:
    """The entries as an array of struct boot_e820_entry."""
    return b"".join(E820_ENTRY.pack(e.addr, e.size, e.type) for e in entries)


def _check_memory_size(memory_size: int) -> None:
    if memory_size < MIN_MEMORY_SIZE:
        raise GuestMemoryTooSmallError(
            f"the VM has {mib(memory_size)} of RAM, but the first 1 MiB is the legacy"
            f" PC area and a kernel needs RAM above it: raise memory= to at least"
            f" {mib(MIN_MEMORY_SIZE)} (a Linux guest needs far more)",
            needed=MIN_MEMORY_SIZE,
            memory_size=memory_size,
        )
