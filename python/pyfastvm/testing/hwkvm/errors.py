"""Why the hardware-KVM lane could not run the command; each message says
what to do."""

from __future__ import annotations

from ..._core import VmmError


class LaneError(VmmError):
    """The lane's QEMU guest did not run the command to its end."""


class QemuMissingError(LaneError):
    """qemu-system-x86_64 is not installed."""


class GuestKvmMissingError(LaneError):
    """The lane's guest booted without a /dev/kvm; ``kernel_lines`` holds
    what its kernel said about KVM and SVM."""

    def __init__(self, message: str, *, kernel_lines: str) -> None:
        super().__init__(message)
        self.kernel_lines = kernel_lines


class LaneTimeoutError(LaneError):
    """The guest ran past the lane's timeout; QEMU has been killed."""


class LaneStalledError(LaneError):
    """The guest printed nothing for too long; QEMU has been killed after
    saying where the guest's CPU was."""
