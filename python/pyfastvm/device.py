"""The contract of a device written in Python."""

from abc import ABC, abstractmethod


class Device(ABC):
    """A device on the PIO or MMIO bus, implemented in Python.

    Register it with ``vm.add_pio_device(base, length, device)`` or
    ``vm.add_mmio_device(base, length, device)``. The vCPU loop calls it
    with the GIL held, on the thread that runs the vCPU. Subclassing is
    optional: any object with these two methods works.

    ``offset`` is relative to ``base``; accesses are 1, 2, 4 or 8 bytes,
    little-endian. An exception raised here ends ``vcpu.run()`` and
    propagates to its caller with its traceback.
    """

    @abstractmethod
    def read(self, offset: int, size: int) -> bytes:
        """Return exactly ``size`` bytes for a guest read at ``offset``."""

    @abstractmethod
    def write(self, offset: int, data: bytes) -> None:
        """Handle a guest write of ``data`` at ``offset``."""
