"""The host's kind of KVM, and everything pyfastvm does differently because
of it, decided once: :func:`host_profile`.

On hardware virtualization (VMX or SVM) a guest runs as on a real CPU. On
KVM on PVM (software virtualization, module ``kvm_pvm``) guest kernel code
runs through KVM's instruction emulator, which lacks some instructions, a
VMCALL never completes, and a SYSCALL from guest user mode never reaches
the guest kernel: pyfastvm switches the affected CPU features off on the
kernel command line, hides the hypercall-based paravirt features, and has
the Rust run loop complete the rest (the exit assists in rust/src/assist).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .x86.cpuid import HYPERCALL_FEATURES

PVM_MODULE = Path("/sys/module/kvm_pvm")

# Kernel arguments for KVM on PVM. These CPU features make the kernel use
# instructions the emulator lacks (XSAVE/XRSTOR, CMPXCHG16B, POPCNT, SSSE3
# and SSE4 (the kernel's BLAKE2s and CRC code), AES-NI, STAC/CLAC, and with
# FSGSBASE the LSL that NMI entry uses to find its per-CPU area);
# KVM_SET_CPUID2 cannot hide them on such a host, so the kernel is told to
# leave them alone. The emulator's pace also trips the soft-lockup watchdog
# on slow initcalls.
PVM_KERNEL_ARGS = (
    "noxsave",
    "clearcpuid=cx16,popcnt,ssse3,sse4_1,sse4_2,aes,smap,fsgsbase",
    "nowatchdog",
)

# What the run loop completes on KVM on PVM: system calls from guest user
# mode (the hooked #PF gate), and INT3, FWAIT and LDMXCSR at CPL 0.
PVM_EXIT_ASSISTS = ("syscall", "int3", "fwait", "ldmxcsr")

DefaultKernel = Literal["stock", "minimal"]


@dataclass(frozen=True)
class HostProfile:
    """How pyfastvm sets up guests on one kind of host."""

    kind: Literal["hardware", "pvm"]
    # Appended to pyfastvm's kernel command line.
    kernel_args: tuple[str, ...] = ()
    # KVM paravirt feature bits (CPUID 0x40000001 EAX) hidden from the guest.
    hidden_kvm_features: int = 0
    # The assists the VM's run loop uses (vm.enable_exit_assists).
    exit_assists: tuple[str, ...] = ()
    # The guest kernel pyfastvm.run boots when given none: Debian's stock
    # kernel, or the minimal test kernel where the stock one is too slow.
    default_kernel: DefaultKernel = "stock"
    # After a command has reported, how long the guest may take to power
    # itself off (its kernel offlines every other vCPU first).
    power_off_grace: float = 10.0

    @property
    def is_pvm(self) -> bool:
        return self.kind == "pvm"


HARDWARE = HostProfile(kind="hardware")
# On KVM on PVM Debian's kernel needs 3 to 15 minutes to reach its init, the
# minimal kernel 16 to 53 seconds (after a one-time build of a few minutes).
PVM = HostProfile(
    kind="pvm",
    kernel_args=PVM_KERNEL_ARGS,
    hidden_kvm_features=HYPERCALL_FEATURES,
    exit_assists=PVM_EXIT_ASSISTS,
    default_kernel="minimal",
    # Offlining three emulated vCPUs took over 10 s on a loaded 2-core host.
    power_off_grace=120.0,
)


def is_pvm_host() -> bool:
    """True when /dev/kvm is KVM on PVM (software virtualization, no VMX/SVM)."""
    return PVM_MODULE.exists()


@functools.cache
def host_profile() -> HostProfile:
    """This host's profile, detected once per process."""
    return PVM if is_pvm_host() else HARDWARE
