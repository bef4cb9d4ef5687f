"""Errors raised while preparing a guest kernel boot."""

from __future__ import annotations

from .._core import VmmError
from .layout import MIB


class BootError(VmmError):
    """Base class: the kernel, initrd or command line cannot be booted."""


class KernelFormatError(BootError):
    """The kernel file is not a bootable x86-64 Linux kernel, or is damaged."""


class CommandLineError(BootError):
    """The kernel command line is too long or holds a NUL byte."""


class InitrdTooLargeError(BootError):
    """The initrd does not fit below the highest address the kernel allows."""


class GuestMemoryTooSmallError(BootError):
    """The VM has too little RAM for the kernel and initrd.

    ``needed`` and ``memory_size`` are in bytes.
    """

    def __init__(self, message: str, *, needed: int, memory_size: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.memory_size = memory_size


def mib(size: int) -> str:
    """Format a byte count as MiB with one decimal, e.g. '14.2 MiB'."""
    value = size / MIB
    if value == int(value):
        return f"{int(value)} MiB"
    return f"{value:.1f} MiB"
