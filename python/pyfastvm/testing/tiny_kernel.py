"""A tiny 64-bit kernel for tests and benchmarks of privilege transitions:
SYSCALL and SYSRET, exceptions from user mode, and the exit assists that
complete them on KVM-on-PVM hosts.

The guest starts at CPL 0 in enter_long_mode's identity map, with an IDT
whose every gate reports its vector on the debug-exit port, a TSS whose
RSP0 takes events from user mode, and a supervisor-only 2 MiB page for the
kernel's code (the rest of the map is user-accessible). The caller brings
the machine code: the kernel's start, its SYSCALL entry (placed behind INT3
padding, as Linux places its own), its #PF handler, and the user program.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .._core import Sregs, Vcpu, Vm
from ..boot.layout import BOOT_GDT_ADDR, PD_ADDR
from ..x86.long_mode import KERNEL_CODE_SELECTOR, PAGE_USER, enter_long_mode

DEBUG_EXIT_PORT = 0xF4
USER_CODE, USER_STACK = 0x10000, 0x70000
HANDLERS, IDT, TSS, KERNEL_STACK = 0x20000, 0x30000, 0x40000, 0x80000
TSS_SELECTOR = 0x30  # a 16-byte system descriptor just past enter_long_mode's GDT
TSS_LIMIT = 103
KERNEL_PAGE = 0x400000  # the third 2 MiB page, made supervisor-only
SYSCALL_ENTRY = KERNEL_PAGE + 0x100
PAGE_FAULT_HANDLER = KERNEL_PAGE + 0x200
PAGE_FAULT = 14
VECTORS = 32
INT3_PADDING = b"\xcc" * 16
USER_RFLAGS = 0x202  # IF

# The usual boot: set up SYSCALL and drop to the user program.
#   mov ecx, 0xc0000081; xor eax, eax; mov edx, 0x180010; wrmsr
#       IA32_STAR: SYSCALL CS 0x10 (SS 0x18), SYSRET base 0x18 (user CS 0x2b, SS 0x23)
#   mov ecx, 0xc0000082; mov eax, SYSCALL_ENTRY; xor edx, edx; wrmsr   IA32_LSTAR
#   mov ecx, 0xc0000084; mov eax, 0x47700; xor edx, edx; wrmsr
#       IA32_FMASK: TF, IF, DF, IOPL, NT and AC, as Linux masks them
#   mov esp, USER_STACK; mov ecx, USER_CODE; mov r11d, USER_RFLAGS; sysretq
SYSCALL_BOOT = bytes.fromhex(
    "b9810000c031c0ba100018000f30"
    "b9820000c0b80001400031d20f30"
    "b9840000c0b80077040031d20f30"
    "bc00000700b90000010041bb02020000480f07"
)


def interrupt_gate(handler: int, selector: int = KERNEL_CODE_SELECTOR, dpl: int = 0) -> bytes:
    """A present 64-bit interrupt gate, IST 0 (Intel SDM vol. 3A, 6.14.1)."""
    low = handler & 0xFFFF | selector << 16
    high = (handler >> 16 & 0xFFFF) << 16 | (0x8E | dpl << 5) << 8
    return struct.pack("<IIII", low, high, handler >> 32, 0)


def tss_descriptor(base: int, limit: int) -> bytes:
    """A 16-byte available 64-bit TSS descriptor (SDM vol. 3A, 8.2.3)."""
    low = limit & 0xFFFF | (base & 0xFFFFFF) << 16 | 0x89 << 40 | (base >> 24 & 0xFF) << 56
    return struct.pack("<QQ", low, base >> 32)


def reporting_handler(vector: int) -> bytes:
    """mov al, vector; out 0xf4, al; jmp $   (16 bytes: one per vector)"""
    return bytes([0xB0, vector, 0xE6, DEBUG_EXIT_PORT, 0xEB, 0xFE]).ljust(16, b"\x90")


def install_tss(vm: Vm, sregs: Sregs, rsp0: int) -> None:
    """A TSS whose RSP0 is the stack for events from user mode (SDM 3A, 8.7),
    in the GDT after enter_long_mode's entries, loaded in TR."""
    vm.memory.write(TSS, struct.pack("<IQ", 0, rsp0).ljust(TSS_LIMIT + 1, b"\0"))
    vm.memory.write(BOOT_GDT_ADDR + TSS_SELECTOR, tss_descriptor(TSS, TSS_LIMIT))
    sregs.gdt.limit = TSS_SELECTOR + 15
    tr = sregs.tr
    tr.base, tr.limit, tr.selector, tr.type, tr.present, tr.s, tr.unusable = (
        TSS, TSS_LIMIT, TSS_SELECTOR, 11, 1, 0, 0)  # fmt: skip
    sregs.tr = tr


@dataclass(frozen=True)
class TinyKernel:
    """The machine code of the guest; see the module's docstring."""

    boot: bytes
    syscall_entry: bytes
    page_fault_handler: bytes
    user_program: bytes
    # What precedes the syscall entry on its page.
    padding: bytes = INT3_PADDING
    # Gate 14; by default an interrupt gate to the #PF handler.
    page_fault_gate: bytes | None = None

    def load(self, vm: Vm) -> Vcpu:
        """Writes the guest into `vm` and returns its vCPU 0, ready to run
        `boot` at CPL 0 on the kernel stack."""
        vcpu = vm.create_vcpu(0)
        enter_long_mode(vcpu, vm.memory)
        (pde,) = struct.unpack("<Q", vm.memory.read(PD_ADDR + 16, 8))
        vm.memory.write(PD_ADDR + 16, struct.pack("<Q", pde & ~PAGE_USER))
        vm.memory.write(KERNEL_PAGE, self.boot)
        vm.memory.write(SYSCALL_ENTRY - len(self.padding), self.padding + self.syscall_entry)
        vm.memory.write(PAGE_FAULT_HANDLER, self.page_fault_handler)
        vm.memory.write(USER_CODE, self.user_program)
        vm.memory.write(HANDLERS, b"".join(reporting_handler(v) for v in range(VECTORS)))
        gates = [interrupt_gate(HANDLERS + 16 * v) for v in range(VECTORS)]
        gates[PAGE_FAULT] = self.page_fault_gate or interrupt_gate(PAGE_FAULT_HANDLER)
        vm.memory.write(IDT, b"".join(gates))
        sregs = vcpu.get_sregs()
        sregs.idt.base, sregs.idt.limit = IDT, 16 * VECTORS - 1
        install_tss(vm, sregs, KERNEL_STACK)
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip, regs.rsp, regs.rflags = KERNEL_PAGE, KERNEL_STACK, 2
        vcpu.set_regs(regs)
        return vcpu
