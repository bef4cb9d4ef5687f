"""Devices: the contract of a device written in Python, and the devices
built into the Rust core, whose guest accesses never enter Python."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from ._core import (
    I8042,
    BuiltinDevice,
    DebugExit,
    DeviceInfo,
    PmTimer,
    PowerControl,
    Serial,
    Sink,
    VirtioBlk,
    VirtioRng,
    VirtioVsock,
    restore_device_state,
    save_device_state,
)
from .description import DeviceDescription


class Device(ABC):
    """A device on the PIO or MMIO bus, implemented in Python.

    Register it with ``vm.add_pio_device(base, length, device)`` or
    ``vm.add_mmio_device(base, length, device)`` (or a ``DeviceSpec`` in
    ``VMConfig.devices``). The vCPU loop calls it with the GIL held, on the
    thread that runs the vCPU. Subclassing is optional: any object with
    ``read`` and ``write`` works.

    ``offset`` is relative to ``base``; accesses are 1, 2, 4 or 8 bytes,
    little-endian. An exception raised here ends ``vcpu.run()`` and
    propagates to its caller with its traceback.

    Optional, where they apply:

    - ``irq_fd``: an eventfd the device signals its interrupt on; registered
      with a ``gsi``, the VM connects it to that interrupt line.
    - ``describe(info)``: what the device tells the guest, a
      ``pyfastvm.description.DeviceDescription`` (its DSDT terms and kernel
      arguments); ``info`` is its ``DeviceInfo`` (id, range, gsi). The
      default tells nothing.
    - ``snapshot()`` and ``restore(state)``: a device with state implements
      both, which a snapshot of the VM calls (through
      ``pyfastvm.devices.save_device_state`` and ``restore_device_state``)
      while the vCPUs are paused. Without them (as in these defaults) a
      device keeps no state.
    """

    @abstractmethod
    def read(self, offset: int, size: int) -> bytes:
        """Return exactly ``size`` bytes for a guest read at ``offset``."""

    @abstractmethod
    def write(self, offset: int, data: bytes) -> None:
        """Handle a guest write of ``data`` at ``offset``."""

    def describe(self, info: DeviceInfo) -> DeviceDescription:
        """What the guest learns of this device; nothing by default."""
        return DeviceDescription()

    def snapshot(self) -> dict[str, Any]:
        """Return the device's state as JSON-compatible data (dicts with str
        keys, lists, str, int, float, bool, None), for ``restore`` on a new
        device of the same kind in a restored VM."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a state ``snapshot`` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but was given {state!r}")


__all__ = [
    "I8042",
    "BuiltinDevice",
    "DebugExit",
    "Device",
    "PmTimer",
    "PowerControl",
    "Serial",
    "Sink",
    "VirtioBlk",
    "VirtioRng",
    "VirtioVsock",
    "restore_device_state",
    "save_device_state",
]
