"""Checking that kernel and initrd fit in guest RAM, and placing the initrd."""

from __future__ import annotations

from .errors import GuestMemoryTooSmallError, InitrdTooLargeError, mib
from .layout import MIB, MMIO_HOLE_START, PAGE_SIZE, align_down, align_up, low_ram_end
from .plan import LoadedKernel, Region


def kernel_end(kernel: LoadedKernel) -> int:
    """The end of the RAM the kernel uses before it reads the memory map."""
    return max([kernel.footprint.end, *(s.end for s in kernel.segments)])


def ram_needed(kernel: LoadedKernel, initrd_size: int) -> int:
    """Low RAM the kernel and the initrd above it need, in bytes."""
    return align_up(kernel_end(kernel), PAGE_SIZE) + align_up(initrd_size, PAGE_SIZE)


def check_fits(kernel: LoadedKernel, initrd_size: int, memory_size: int) -> None:
    """Raise if the kernel and initrd do not fit in the RAM below 3 GiB."""
    needed = ram_needed(kernel, initrd_size)
    if needed > MMIO_HOLE_START:
        raise InitrdTooLargeError(
            f"{kernel.name} and the initrd ({mib(initrd_size)}) need {mib(needed)} of"
            f" contiguous RAM below the 3 GiB MMIO hole: use a smaller initrd"
        )
    if needed > low_ram_end(memory_size):
        raise GuestMemoryTooSmallError(
            _too_small_message(kernel, initrd_size, needed, memory_size),
            needed=needed,
            memory_size=memory_size,
        )


def _too_small_message(
    kernel: LoadedKernel, initrd_size: int, needed: int, memory_size: int
) -> str:
    footprint = kernel.footprint
    message = (
        f"{kernel.name} ({kernel.kind}) needs guest RAM up to"
        f" {mib(kernel_end(kernel))} ({footprint.name}: {mib(footprint.size)}"
        f" from {mib(footprint.start)})"
    )
    if initrd_size:
        message += f" and the initrd {mib(initrd_size)} above it"
    return (
        f"{message}: {mib(needed)} in all, but the VM has {mib(memory_size)}:"
        f" raise memory= to at least {mib(align_up(needed, MIB))}"
        " (the kernel needs more to run)"
    )


def place_initrd(kernel: LoadedKernel, initrd_size: int, memory_size: int) -> Region:
    """The initrd as high as allowed: page-aligned, below min(initrd_addr_max,
    end of low RAM), above the kernel (boot.rst 'initrd_addr_max')."""
    check_fits(kernel, initrd_size, memory_size)
    top = min(kernel.initrd_addr_max + 1, low_ram_end(memory_size))
    start = align_down(top - initrd_size, PAGE_SIZE)
    lowest = align_up(kernel_end(kernel), PAGE_SIZE)
    if start < lowest:
        raise InitrdTooLargeError(
            f"the initrd ({mib(initrd_size)}) must end below {kernel.name}'s"
            f" initrd_addr_max {kernel.initrd_addr_max:#x} and start above the kernel"
            f" at {mib(lowest)}: make it smaller by {mib(lowest - start)}"
        )
    return Region("initrd", start, initrd_size)
