"""What a kernel loader produces: bytes to write and where to enter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from .e820 import E820Entry
from .errors import BootError
from .memory import GuestMemoryWriter

_ZERO_CHUNK = bytes(1 << 20)


@dataclass(frozen=True)
class Segment:
    """Bytes to write at a guest-physical address, then ``zero_fill`` zeros."""

    gpa: int
    data: bytes
    what: str
    zero_fill: int = 0

    @property
    def size(self) -> int:
        return len(self.data) + self.zero_fill

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def write_to(self, memory: GuestMemoryWriter) -> None:
        memory.write(self.gpa, self.data)
        gpa, remaining = self.gpa + len(self.data), self.zero_fill
        while remaining:
            chunk = _ZERO_CHUNK[: min(remaining, len(_ZERO_CHUNK))]
            memory.write(gpa, chunk)
            gpa, remaining = gpa + len(chunk), remaining - len(chunk)


@dataclass(frozen=True)
class Region:
    """A named guest-physical range [start, start + size)."""

    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class LoadedKernel:
    """A parsed kernel image, before the command line, initrd and RAM size.

    ``footprint`` is the RAM the kernel needs before it reads the e820 map;
    ``setup_header`` is the image's setup header (bytes for boot_params
    offset 0x1F1 on), already adjusted by the loader.
    """

    kind: str
    name: str
    segments: tuple[Segment, ...]
    footprint: Region
    entry_64: int
    pvh_entry: int | None
    setup_header: bytes
    cmdline_size: int
    initrd_addr_max: int


@dataclass(frozen=True)
class BootPlan:
    """Everything needed to start the guest kernel.

    64-bit Linux boot protocol: enter at ``entry_64`` in long mode with RSI =
    ``zero_page_addr``. PVH (when ``pvh_entry`` is set): enter at
    ``pvh_entry`` in 32-bit protected mode, paging off, with EBX =
    ``start_info_addr``.
    """

    kind: str
    segments: tuple[Segment, ...]
    entry_64: int
    zero_page_addr: int
    pvh_entry: int | None
    start_info_addr: int | None
    regions: tuple[Region, ...]
    e820: tuple[E820Entry, ...]

    def __post_init__(self) -> None:
        _check_no_overlap(self.segments)

    def region(self, name: str) -> Region:
        """The placed region called ``name`` (KeyError if absent)."""
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    def write_to(self, memory: GuestMemoryWriter) -> None:
        """Write every segment into guest memory."""
        for segment in self.segments:
            segment.write_to(memory)


def _check_no_overlap(segments: Sequence[Segment]) -> None:
    ordered = sorted(segments, key=lambda s: s.gpa)
    for low, high in pairwise(ordered):
        if low.end > high.gpa:
            raise BootError(
                f"boot layout error: {low.what} [{low.gpa:#x}, {low.end:#x}) overlaps"
                f" {high.what} at {high.gpa:#x}; this is a bug in pyfastvm.boot"
            )
