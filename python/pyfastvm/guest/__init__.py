"""Guest images: a Debian kernel, a busybox initramfs, and the console protocol.

Typical use by the VMM::

    kernel = debian_kernel()
    nonce = new_nonce()
    initrd = build_initramfs(["uname", "-a"], nonce=nonce)
    protocol = ConsoleProtocol(nonce)
    # ... boot with console=ttyS0, feed every UART chunk to protocol.feed()
    # until protocol.finished; then protocol.stdout / protocol.exit_code.
"""

from pyfastvm.guest.cache import cache_dir
from pyfastvm.guest.console_protocol import ConsoleProtocol, new_nonce
from pyfastvm.guest.cpio import CpioEntry, read_cpio, write_cpio
from pyfastvm.guest.debian import busybox_static, debian_kernel, debian_kernel_release
from pyfastvm.guest.errors import (
    AptError,
    ConsoleFrameError,
    ConsoleProtocolError,
    CpioFormatError,
    DebFormatError,
    GuestImageError,
)
from pyfastvm.guest.initramfs import build_initramfs
from pyfastvm.guest.kernel_modules import debian_kernel_modules

__all__ = [
    "AptError",
    "ConsoleFrameError",
    "ConsoleProtocol",
    "ConsoleProtocolError",
    "CpioEntry",
    "CpioFormatError",
    "DebFormatError",
    "GuestImageError",
    "build_initramfs",
    "busybox_static",
    "cache_dir",
    "debian_kernel",
    "debian_kernel_modules",
    "debian_kernel_release",
    "new_nonce",
    "read_cpio",
    "write_cpio",
]
