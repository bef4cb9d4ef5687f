"""The zero page: struct boot_params (Documentation/arch/x86/zero-page.rst)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .e820 import E820Entry, pack_e820
from .errors import BootError
from .layout import ZERO_PAGE_SIZE
from .plan import Region

SETUP_HEADER_OFFSET = 0x1F1
E820_MAX_ENTRIES_ZEROPAGE = 128

# (offset, struct format) of the boot_params fields a boot loader writes.
EXT_RAMDISK_IMAGE = (0x0C0, "<I")
EXT_RAMDISK_SIZE = (0x0C4, "<I")
EXT_CMD_LINE_PTR = (0x0C8, "<I")
E820_ENTRIES = (0x1E8, "<B")
VID_MODE = (0x1FA, "<H")
BOOT_FLAG = (0x1FE, "<H")
HEADER = (0x202, "<4s")
TYPE_OF_LOADER = (0x210, "<B")
RAMDISK_IMAGE = (0x218, "<I")
RAMDISK_SIZE = (0x21C, "<I")
CMD_LINE_PTR = (0x228, "<I")
E820_TABLE_OFFSET = 0x2D0

LOADER_TYPE_UNDEFINED = 0xFF  # boot.rst 'type_of_loader': 0xFF, undefined
VID_MODE_NORMAL = 0xFFFF  # boot.rst 'vid_mode': 0xFFFF, "normal"


def build_zero_page(
    setup_header: bytes,
    *,
    cmdline_addr: int,
    initrd: Region | None,
    e820: Sequence[E820Entry],
) -> bytes:
    """A 4 KiB boot_params: the setup header at 0x1F1 plus the loader's fields."""
    page = bytearray(ZERO_PAGE_SIZE)
    page[SETUP_HEADER_OFFSET : SETUP_HEADER_OFFSET + len(setup_header)] = setup_header
    _put(page, TYPE_OF_LOADER, LOADER_TYPE_UNDEFINED)
    _put(page, VID_MODE, VID_MODE_NORMAL)
    _put_split(page, CMD_LINE_PTR, EXT_CMD_LINE_PTR, cmdline_addr)
    if initrd is not None:
        _put_split(page, RAMDISK_IMAGE, EXT_RAMDISK_IMAGE, initrd.start)
        _put_split(page, RAMDISK_SIZE, EXT_RAMDISK_SIZE, initrd.size)
    _put_e820(page, e820)
    return bytes(page)


def minimal_setup_header() -> bytes:
    """A setup header for a kernel that has none (an ELF vmlinux).

    Only boot_flag and the 'HdrS' magic are set; the loader's fields are
    filled in by build_zero_page.
    """
    page = bytearray(ZERO_PAGE_SIZE)
    _put(page, BOOT_FLAG, 0xAA55)
    _put(page, HEADER, b"HdrS")
    return bytes(page[SETUP_HEADER_OFFSET:0x26C])


def _put(page: bytearray, field: tuple[int, str], value: int | bytes) -> None:
    offset, fmt = field
    struct.pack_into(fmt, page, offset, value)


def _put_split(page: bytearray, low: tuple[int, str], high: tuple[int, str], value: int) -> None:
    """A 64-bit value split into a header field and its boot_params ext_ field."""
    _put(page, low, value & 0xFFFF_FFFF)
    _put(page, high, value >> 32)


def _put_e820(page: bytearray, e820: Sequence[E820Entry]) -> None:
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise BootError(
            f"{len(e820)} e820 entries do not fit the zero page's"
            f" {E820_MAX_ENTRIES_ZEROPAGE}; this is a bug in pyfastvm.boot"
        )
    _put(page, E820_ENTRIES, len(e820))
    table = pack_e820(e820)
    page[E820_TABLE_OFFSET : E820_TABLE_OFFSET + len(table)] = table
