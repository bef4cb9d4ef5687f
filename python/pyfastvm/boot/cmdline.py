"""The kernel command line pyfastvm boots with, before the user's own."""

from __future__ import annotations

from collections.abc import Sequence

# Console on COM1. A panic resets at once, through the FADT's reset register
# (reboot=acpi; the i8042 is the kernel's fallback), which ends the VM with
# reason "reset". Without reboot= a kernel built with EFI support picks an EFI
# reboot on a hardware-reduced ACPI machine and, finding no EFI, jumps to a
# BIOS reset vector that a micro-VM does not have. The i8042 here only
# resets: the FADT says there is no 8042 to probe, and a kernel without ACPI
# is told not to probe for more.
BASE_ARGS = (
    "console=ttyS0",
    "panic=-1",
    "reboot=acpi",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.dumbkbd",
    "cryptomgr.notests",
)


def kernel_cmdline(user_args: str = "", *, host_args: Sequence[str] = ()) -> str:
    """pyfastvm's arguments, the host's (HostProfile.kernel_args), then the user's."""
    args = [*BASE_ARGS, *host_args, user_args.strip()]
    return " ".join(a for a in args if a)
