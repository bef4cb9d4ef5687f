"""Loading a Linux kernel into guest memory: bzImage, ELF vmlinux, PVH.

plan = load_kernel(path, memory_size=256 << 20, cmdline="console=ttyS0")
plan.write_to(vm.memory)
# 64-bit entry: RIP = plan.entry_64, RSI = plan.zero_page_addr
# PVH entry (if plan.pvh_entry is not None): EIP = plan.pvh_entry,
#   EBX = plan.start_info_addr
"""

from .bzimage import SetupHeader, parse_setup_header
from .decompress import decompress_bzimage
from .e820 import E820Entry, E820Type, build_e820, pack_e820
from .errors import (
    BootError,
    CommandLineError,
    GuestMemoryTooSmallError,
    InitrdTooLargeError,
    KernelFormatError,
)
from .loader import load_kernel
from .memory import GuestMemoryWriter
from .plan import BootPlan, Region, Segment

__all__ = [
    "BootError",
    "BootPlan",
    "CommandLineError",
    "E820Entry",
    "E820Type",
    "GuestMemoryTooSmallError",
    "GuestMemoryWriter",
    "InitrdTooLargeError",
    "KernelFormatError",
    "Region",
    "Segment",
    "SetupHeader",
    "build_e820",
    "decompress_bzimage",
    "load_kernel",
    "pack_e820",
    "parse_setup_header",
]
