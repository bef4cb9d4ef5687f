"""Model-specific registers a vCPU starts with (Intel SDM vol. 4)."""

from __future__ import annotations

IA32_TSC = 0x10
IA32_SYSENTER_CS = 0x174
IA32_SYSENTER_ESP = 0x175
IA32_SYSENTER_EIP = 0x176
IA32_MISC_ENABLE = 0x1A0
IA32_MTRR_DEF_TYPE = 0x2FF
MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_CSTAR = 0xC000_0083
MSR_SYSCALL_MASK = 0xC000_0084
MSR_KERNEL_GS_BASE = 0xC000_0102

MISC_ENABLE_FAST_STRING = 1 << 0
MTRR_ENABLE = 1 << 11
MTRR_TYPE_WRITEBACK = 6


def boot_msrs() -> dict[int, int]:
    """As a CPU comes out of reset, with fast strings on and all memory
    write-back by default, so the kernel needs no MTRR set-up of its own."""
    zeroed = (
        IA32_SYSENTER_CS,
        IA32_SYSENTER_ESP,
        IA32_SYSENTER_EIP,
        MSR_STAR,
        MSR_LSTAR,
        MSR_CSTAR,
        MSR_SYSCALL_MASK,
        MSR_KERNEL_GS_BASE,
        IA32_TSC,
    )
    return {index: 0 for index in zeroed} | {
        IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
        IA32_MTRR_DEF_TYPE: MTRR_ENABLE | MTRR_TYPE_WRITEBACK,
    }
