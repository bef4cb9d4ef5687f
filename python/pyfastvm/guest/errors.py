"""Exceptions raised while preparing guest images and reading guest output.

Every message names what went wrong and how to get past it.
"""

from __future__ import annotations

from .._core import VmmError


class GuestImageError(VmmError):
    """Fetching, unpacking or assembling a guest kernel or initramfs failed."""


class AptError(GuestImageError):
    """``apt-get`` is missing or could not download a package."""


class DebFormatError(GuestImageError):
    """A ``.deb`` file (its ``ar`` wrapper or its tar members) is malformed."""


class CpioFormatError(GuestImageError):
    """A newc cpio archive is malformed."""


class ConsoleProtocolError(VmmError):
    """The guest's report on the serial console could not be understood."""


class ConsoleFrameError(ConsoleProtocolError):
    """A report frame from the guest was lost or arrived corrupted."""
