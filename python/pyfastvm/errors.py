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


class GuestError(VmmError):
    """The guest did not do what was asked of it."""


class GuestTimeoutError(GuestError):
    """The guest ran past its timeout; it has been stopped."""


class GuestPanicError(GuestError):
    """The guest kernel panicked; ``panic`` holds its panic line."""

    def __init__(self, message: str, *, panic: str) -> None:
        super().__init__(message)
        self.panic = panic


class HostLimitationError(GuestError):
    """The host's KVM cannot run what the guest needs (e.g. guest user space
    on KVM on PVM)."""


__all__ = [
    "BusConflictError",
    "DeviceError",
    "GuestError",
    "GuestMemoryError",
    "GuestPanicError",
    "GuestTimeoutError",
    "HostLimitationError",
    "KvmError",
    "KvmUnavailableError",
    "UnclaimedAccessError",
    "VcpuBusyError",
    "VmmError",
]
