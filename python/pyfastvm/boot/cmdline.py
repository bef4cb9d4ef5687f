"""The kernel command line pyfastvm boots with, before the user's own."""

from __future__ import annotations

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

# KVM on PVM runs guest kernel code through KVM's instruction emulator.
# These CPU features make the kernel use instructions the emulator lacks
# (XSAVE/XRSTOR, CMPXCHG16B, POPCNT, SSSE3 and SSE4 (the kernel's BLAKE2s and
# CRC code), AES-NI, STAC/CLAC); KVM_SET_CPUID2
# cannot hide them on such a host, so the kernel is told to leave them alone.
# The emulator's pace also trips the soft-lockup watchdog on slow initcalls.
PVM_ARGS = (
    "noxsave",
    "clearcpuid=cx16,popcnt,ssse3,sse4_1,sse4_2,aes,smap",
    "nowatchdog",
)


def kernel_cmdline(user_args: str = "", *, pvm_host: bool = False) -> str:
    """pyfastvm's arguments, the PVM ones where needed, then the user's."""
    args = [*BASE_ARGS, *(PVM_ARGS if pvm_host else ()), user_args.strip()]
    return " ".join(a for a in args if a)
