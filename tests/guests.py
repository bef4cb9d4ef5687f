"""Tiny guest programs for the core tests: machine code as bytes, with the
assembly (Intel syntax) beside it, and the vCPU set-up each mode needs."""

from __future__ import annotations

import pyfastvm
from pyfastvm.x86.long_mode import enter_long_mode

CODE_ADDRESS = 0x10000
REAL_MODE_CODE = 0x1000
STACK_TOP = 0x80000
SERIAL_PORT = 0x3F8
DEBUG_EXIT_PORT = 0xF4
MMIO_BASE = 0xD000_0000  # in the 32-bit hole: never RAM


def real_mode_vcpu(vm: pyfastvm.Vm, code: bytes, index: int = 0) -> pyfastvm.Vcpu:
    """A vCPU in real mode with CS = DS = 0, executing `code` at 0x1000."""
    vm.memory.write(REAL_MODE_CODE, code)
    vcpu = vm.create_vcpu(index)
    sregs = vcpu.get_sregs()
    for segment in (sregs.cs, sregs.ds, sregs.es, sregs.ss):
        segment.base = 0
        segment.selector = 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs(pyfastvm.Regs(rip=REAL_MODE_CODE, rsp=0x8000, rflags=2))
    return vcpu


def long_mode_vcpu(
    vm: pyfastvm.Vm,
    code: bytes,
    index: int = 0,
    *,
    user: bool = False,
    address: int = CODE_ADDRESS,
) -> pyfastvm.Vcpu:
    """A vCPU in 64-bit mode (CPL 3 with `user`) executing `code` at `address`."""
    vm.memory.write(address, code)
    vcpu = vm.create_vcpu(index)
    enter_long_mode(vcpu, vm.memory, user=user)
    regs = vcpu.get_regs()
    regs.rip = address
    regs.rsp = STACK_TOP - 0x1000 * index
    vcpu.set_regs(regs)
    return vcpu


class Recorder(pyfastvm.Device):
    """Collects writes; reads return bytes from `answer`, least significant first."""

    def __init__(self, answer: int = 0) -> None:
        self.writes: list[tuple[int, bytes]] = []
        self.reads: list[tuple[int, int]] = []
        self.answer = answer

    def read(self, offset: int, size: int) -> bytes:
        self.reads.append((offset, size))
        return self.answer.to_bytes(8, "little")[:size]

    def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, data))

    @property
    def text(self) -> bytes:
        return b"".join(data for _, data in self.writes)


# Real mode: mov si, 0x1100; mov cx, 5; mov dx, 0x3f8; cld; rep outsb; hlt
REAL_REP_OUTSB = bytes.fromhex("be0011b90500baf803fcf36ef4")
# Real mode: mov di, 0x1200; mov cx, 4; mov dx, 0x3f8; cld; rep insb; hlt
REAL_REP_INSB = bytes.fromhex("bf0012b90400baf803fcf36cf4")
# Real mode: mov ax, 0xf000; mov ds, ax; mov eax, [0x10]; hlt   (reads 0xf0010)
REAL_MMIO_READ = bytes.fromhex("b800f08ed866a11000f4")

# 64-bit: lea rsi, [rip + msg]; mov ecx, 5; mov dx, 0x3f8; cld; rep outsb;
#         out 0xf4, al; msg: "hello"        (no hlt: it would fault at CPL 3)
LONG_REP_OUTSB = bytes.fromhex("488d350e000000b90500000066baf803fcf36ee6f4") + b"hello"
# 64-bit: mov ebx, 0xd0000000; mov rax, [rbx]; mov dword [rbx + 8], 0xcafef00d; hlt
LONG_MMIO_READ_WRITE = bytes.fromhex("bb000000d0488b03c743080df0fecaf4")
# 64-bit: ud2   (with an empty IDT: #UD, #DF, then a triple fault)
LONG_UD2 = bytes.fromhex("0f0b")
# 64-bit: jmp $   (spins forever)
LONG_SPIN = bytes.fromhex("ebfe")
# 64-bit: mov eax, 42; out 0xf4, eax
LONG_DEBUG_EXIT_42 = bytes.fromhex("b82a000000e7f4")
# 64-bit: mov dx, 0x1234; in al, dx; hlt   (a port nobody claims)
LONG_UNCLAIMED_IN = bytes.fromhex("66ba3412ecf4")
# 64-bit: mov ecx, 1000; 1: mov dx, 0x3f8; out dx, al; dec ecx; jnz 1b; out 0xf4, al
LONG_THOUSAND_OUTS = bytes.fromhex("b9e803000066baf803eeffc975f7e6f4")
# 64-bit: mov dx, 0x3f8; mov al, 'h'; out dx, al; mov al, 'i'; out dx, al; in al, dx;
#         out 0xf4, al   (transmits "hi", then reports the received byte)
LONG_SERIAL_ECHO = bytes.fromhex("66baf803b068eeb069eeece6f4")
# 64-bit: mov al, 0xfe; out 0x64, al; hlt   (the keyboard controller's CPU reset)
LONG_I8042_RESET = bytes.fromhex("b0fee664f4")
# 64-bit: 1: inc rbx; inc qword [rip + 0xf6] (the counter at 0x100); mov eax, ebx;
#         mov dx, 0x3f8; out dx, eax; jmp 1b   (counts in rbx and memory, reports each count)
LONG_COUNTING_LOOP = bytes.fromhex("48ffc348ff05f600000089d866baf803efebed")
LONG_COUNTING_LOOP_COUNTER = 0x100
# 64-bit: mov eax, 42; out 0xf4, eax; mov eax, 7; out 0xf4, eax   (two debug exits)
LONG_TWO_DEBUG_EXITS = bytes.fromhex("b82a000000e7f4b807000000e7f4")
# 64-bit: mov al, 0xa5; out 0x21, al; mov al, 0x5a; out 0xa1, al   (the PICs' masks)
#         mov al, 0x34; out 0x43, al; mov al, 0x9c; out 0x40, al; mov al, 0x2e; out 0x40, al
#                                            (PIT channel 0: mode 2, count 0x2e9c)
#         mov ebx, 0xfec00000; mov dword [rbx], 0x1a; mov dword [rbx + 0x10], 0x100a5
#                                            (I/O APIC pin 5: vector 0xa5, masked)
#         out 0xf4, al
LONG_PROGRAM_PICS_PIT_IOAPIC = bytes.fromhex(
    "b0a5e621b05ae6a1b034e643b09ce640b02ee640bb0000c0fec7031a000000c74310a5000100e6f4"
)
# 64-bit, at CPL 3 (KVM on PVM does not emulate SSE moves at CPL 0):
#         mov rax, 0x1122334455667788; movq xmm3, rax; out 0xf4, eax
#         xor eax, eax; movq rax, xmm3; shr rax, 32; out 0xf4, eax
#                                  (keeps a value in xmm3 across a debug exit, then reports it)
LONG_XMM3_ACROSS_AN_EXIT = bytes.fromhex(
    "48b8887766554433221166480f6ed8e7f431c066480f7ed848c1e820e7f4"
)
