"""Turning a loaded kernel, command line and initrd into a BootPlan."""

from __future__ import annotations

from .e820 import E820Entry, build_e820
from .errors import CommandLineError
from .layout import CMDLINE_ADDR, CMDLINE_CAPACITY, PVH_START_INFO_ADDR, ZERO_PAGE_ADDR
from .placement import check_fits, place_initrd
from .plan import BootPlan, LoadedKernel, Region, Segment
from .pvh import build_start_info
from .zeropage import build_zero_page


def encode_cmdline(cmdline: str, cmdline_size: int, kernel_name: str) -> bytes:
    """The command line, NUL-terminated (boot.rst 'cmdline_size' excludes the NUL)."""
    data = cmdline.encode()
    if b"\0" in data:
        raise CommandLineError(
            f"the kernel command line has a NUL byte at offset {data.index(0)}: remove it"
        )
    limit = min(cmdline_size, CMDLINE_CAPACITY - 1)
    if len(data) > limit:
        raise CommandLineError(
            f"the kernel command line is {len(data)} bytes but {kernel_name} accepts"
            f" at most {limit} (cmdline_size): shorten it by {len(data) - limit} bytes"
        )
    return data + b"\0"


def build_boot_plan(
    kernel: LoadedKernel, *, memory_size: int, cmdline: str, initrd: bytes | None
) -> BootPlan:
    """Place command line, initrd, zero page and PVH start info around the kernel."""
    e820 = build_e820(memory_size)
    cmdline_data = encode_cmdline(cmdline, kernel.cmdline_size, kernel.name)
    initrd_region = _place(kernel, initrd, memory_size)
    zero_page = build_zero_page(
        kernel.setup_header, cmdline_addr=CMDLINE_ADDR, initrd=initrd_region, e820=e820
    )
    segments = [
        *kernel.segments,
        Segment(CMDLINE_ADDR, cmdline_data, "command line"),
        Segment(ZERO_PAGE_ADDR, zero_page, "zero page"),
    ]
    if initrd and initrd_region:
        segments.append(Segment(initrd_region.start, initrd, "initrd"))
    if kernel.pvh_entry is not None:
        segments += _start_info(initrd_region, e820)
    return BootPlan(
        kind=kernel.kind,
        segments=tuple(segments),
        entry_64=kernel.entry_64,
        zero_page_addr=ZERO_PAGE_ADDR,
        pvh_entry=kernel.pvh_entry,
        start_info_addr=PVH_START_INFO_ADDR if kernel.pvh_entry is not None else None,
        regions=(*(Region(s.what, s.gpa, s.size) for s in segments), kernel.footprint),
        e820=e820,
    )


def _start_info(initrd: Region | None, e820: tuple[E820Entry, ...]) -> tuple[Segment, ...]:
    modules = [initrd] if initrd else []
    return build_start_info(cmdline_addr=CMDLINE_ADDR, modules=modules, e820=e820)


def _place(kernel: LoadedKernel, initrd: bytes | None, memory_size: int) -> Region | None:
    if not initrd:
        check_fits(kernel, 0, memory_size)
        return None
    return place_initrd(kernel, len(initrd), memory_size)
