"""The pyfastvm exception hierarchy; every error derives from :class:`VmmError`."""

from ._core import (
    BusConflictError,
    DeviceError,
    GuestMemoryError,
    KvmError,
    KvmUnavailableError,
    UnclaimedAccessError,
    VcpuBusyError,
    VmmError,
)

__all__ = [
    "BusConflictError",
    "DeviceError",
    "GuestMemoryError",
    "KvmError",
    "KvmUnavailableError",
    "UnclaimedAccessError",
    "VcpuBusyError",
    "VmmError",
]
