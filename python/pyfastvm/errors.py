"""The pyfastvm exception hierarchy; every error derives from :class:`VmmError`."""

from ._core import (
    BusConflictError,
    DeviceError,
    EmulationFailureError,
    GuestMemoryError,
    InvalidArgumentError,
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
    """The host's KVM cannot run what the guest needs (e.g. user space of a
    kernel whose system calls pyfastvm cannot complete on KVM on PVM)."""


class VcpuExitError(VmmError):
    """A vCPU stopped with an exit the machine cannot continue from (a failed
    entry, an exit KVM gave no user-space handling for)."""


__all__ = [
    "BusConflictError",
    "DeviceError",
    "EmulationFailureError",
    "GuestError",
    "GuestMemoryError",
    "GuestPanicError",
    "GuestTimeoutError",
    "HostLimitationError",
    "InvalidArgumentError",
    "KvmError",
    "KvmUnavailableError",
    "UnclaimedAccessError",
    "VcpuBusyError",
    "VcpuExitError",
    "VmmError",
]
