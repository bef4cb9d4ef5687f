"""The interface through which boot data is written into guest memory."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class GuestMemoryWriter(Protocol):
    """Anything that can copy bytes to a guest-physical address.

    The VMM core's ``vm.memory`` object implements this.
    """

    def write(self, gpa: int, data: bytes) -> None:
        """Copy ``data`` into guest memory starting at guest-physical ``gpa``."""
        ...
