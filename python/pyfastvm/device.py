"""The contract of a device written in Python."""

from abc import ABC, abstractmethod
from typing import Any


class Device(ABC):
    """A device on the PIO or MMIO bus, implemented in Python.

    Register it with ``vm.add_pio_device(base, length, device)`` or
    ``vm.add_mmio_device(base, length, device)``. The vCPU loop calls it
    with the GIL held, on the thread that runs the vCPU. Subclassing is
    optional: any object with these two methods works.

    ``offset`` is relative to ``base``; accesses are 1, 2, 4 or 8 bytes,
    little-endian. An exception raised here ends ``vcpu.run()`` and
    propagates to its caller with its traceback.

    A device with state implements ``snapshot`` and ``restore``, which a
    snapshot of the VM calls (through ``pyfastvm.devices.save_device_state``
    and ``restore_device_state``) while the vCPUs are stopped. Without them
    (as in these defaults) a device keeps no state.
    """

    @abstractmethod
    def read(self, offset: int, size: int) -> bytes:
        """Return exactly ``size`` bytes for a guest read at ``offset``."""

    @abstractmethod
    def write(self, offset: int, data: bytes) -> None:
        """Handle a guest write of ``data`` at ``offset``."""

    def snapshot(self) -> dict[str, Any]:
        """Return the device's state as JSON-compatible data (dicts with str
        keys, lists, str, int, float, bool, None), for ``restore`` on a new
        device of the same kind in a restored VM."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a state ``snapshot`` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but was given {state!r}")
