"""The kernel command line pyfastvm boots with, before the user's own."""

from __future__ import annotations

from collections.abc import Sequence

# A panic resets at once (through the FADT's reset register: see the power
# control device's reboot=acpi), which ends the VM with reason "reset".
BASE_ARGS = ("panic=-1", "cryptomgr.notests")


def kernel_cmdline(user_args: str = "", *, extra_args: Sequence[str] = ()) -> str:
    """pyfastvm's arguments, the machine's (its devices' and its host's), then
    the user's."""
    args = [*BASE_ARGS, *extra_args, user_args.strip()]
    return " ".join(a for a in args if a)
