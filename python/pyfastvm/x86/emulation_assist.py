"""Completing, in the VMM, the few instructions a Linux guest needs that KVM's
instruction emulator cannot run.

On hosts without hardware virtualization (KVM on PVM) guest kernel code runs
through that emulator, and an instruction it lacks ends KVM_RUN with an
emulation failure carrying the instruction's bytes. The ones handled here
are simple to finish from outside, as the CPU would:

- INT3 (the kernel's text patching and its int3 self-test): the #BP trap is
  injected with RIP past the INT3, so the guest's handler sees the frame a
  CPU pushes (Intel SDM vol. 3A, 6.5 "Exception Classifications": traps
  report the next instruction).
- FWAIT with no x87 exception pending: a no-op (SDM vol. 2A, "WAIT/FWAIT").
- LDMXCSR m32: MXCSR is loaded through KVM_SET_FPU.

Anything else raises EmulationFailureError with the guest RIP, the bytes and
what to try.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._core import Exit, GuestMemory, Regs, Vcpu, VmmError

KVM_INTERNAL_ERROR_EMULATION = 1
INT3, FWAIT = 0xCC, 0x9B
BREAKPOINT_VECTOR = 3
LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
GS_OVERRIDE, FS_OVERRIDE = 0x65, 0x64
GPR_ORDER = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip


class EmulationFailureError(VmmError):
    """KVM could not emulate a guest instruction and the VMM cannot finish it."""


@dataclass(frozen=True)
class MemoryOperand:
    """A decoded ModRM memory operand (SDM vol. 2A, 2.1.5 and 2.2.1)."""

    address: int
    reg: int  # the ModRM reg field: an opcode extension for group opcodes
    length: int  # of the whole instruction


def _skip_prefixes(insn: bytes) -> tuple[int, int, int | None]:
    """Index of the opcode, the REX byte (0 if none), the segment override."""
    index, segment = 0, None
    while insn[index] in LEGACY_PREFIXES:
        if insn[index] in (FS_OVERRIDE, GS_OVERRIDE):
            segment = insn[index]
        index += 1
    rex = insn[index] if 0x40 <= insn[index] <= 0x4F else 0
    return index + (1 if rex else 0), rex, segment


def decode_memory_operand(
    insn: bytes, opcode_length: int, regs: Regs, segment_bases: dict[int, int]
) -> MemoryOperand:
    """The effective address of a 64-bit-mode ModRM memory operand."""
    start, rex, segment = _skip_prefixes(insn)
    index = start + opcode_length
    modrm = insn[index]
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
    index += 1
    if mod == 3:
        raise ValueError("register operand, not memory")
    gpr = [getattr(regs, name) for name in GPR_ORDER]
    address = 0
    if rm == 4:  # SIB byte follows
        sib = insn[index]
        index += 1
        scale, sib_index, base = sib >> 6, ((sib >> 3) & 7) | (rex & 2) << 2, sib & 7
        if sib_index != 4:
            address += gpr[sib_index] << scale
        if base == 5 and mod == 0:
            address += int.from_bytes(insn[index : index + 4], "little", signed=True)
            index += 4
        else:
            address += gpr[base | (rex & 1) << 3]
    elif rm == 5 and mod == 0:  # RIP-relative, from the next instruction
        disp = int.from_bytes(insn[index : index + 4], "little", signed=True)
        index += 4
        address = regs.rip + index + disp
    else:
        address = gpr[rm | (rex & 1) << 3]
    if mod in (1, 2):
        size = 1 if mod == 1 else 4
        address += int.from_bytes(insn[index : index + size], "little", signed=True)
        index += size
    address += segment_bases.get(segment, 0) if segment else 0
    return MemoryOperand(address & (2**64 - 1), reg, index)


def is_emulation_failure(exit: Exit) -> bool:
    return exit.reason == "internal_error" and exit.suberror == KVM_INTERNAL_ERROR_EMULATION


class EmulationAssist:
    """Finishes the instructions above for one vCPU; counts what it did."""

    def __init__(self, vcpu: Vcpu, memory: GuestMemory) -> None:
        self.vcpu = vcpu
        self.memory = memory
        self.completed: dict[str, int] = {}

    def complete(self, exit: Exit) -> None:
        """Completes the failed instruction, or raises EmulationFailureError."""
        insn = exit.instruction or b""
        regs = self.vcpu.get_regs()
        if insn[:1] == bytes([INT3]):
            self._count("int3")
            regs.rip += 1
            self.vcpu.set_regs(regs)
            self.vcpu.inject_exception(BREAKPOINT_VECTOR)
        elif insn[:1] == bytes([FWAIT]):
            self._count("fwait")
            regs.rip += 1
            self.vcpu.set_regs(regs)
        elif self._is_ldmxcsr(insn):
            self._ldmxcsr(insn, regs)
        else:
            raise EmulationFailureError(_failure_message(regs.rip, insn))

    def _read_virtual(self, address: int, size: int) -> bytes:
        physical = self.vcpu.translate(address)
        if physical is None:
            raise EmulationFailureError(f"guest address {address:#x} is not mapped")
        return self.memory.read(physical, size)

    def _count(self, name: str) -> None:
        self.completed[name] = self.completed.get(name, 0) + 1

    @staticmethod
    def _is_ldmxcsr(insn: bytes) -> bool:
        start, _, _ = _skip_prefixes(insn)
        return insn[start : start + 2] == b"\x0f\xae" and (insn[start + 2] >> 3) & 7 == 2

    def _ldmxcsr(self, insn: bytes, regs: Regs) -> None:
        sregs = self.vcpu.get_sregs()
        bases = {FS_OVERRIDE: sregs.fs.base, GS_OVERRIDE: sregs.gs.base}
        operand = decode_memory_operand(insn, 2, regs, bases)
        fpu = self.vcpu.get_fpu()
        fpu.mxcsr = int.from_bytes(self._read_virtual(operand.address, 4), "little")
        self.vcpu.set_fpu(fpu)
        regs.rip += operand.length
        self.vcpu.set_regs(regs)
        self._count("ldmxcsr")


def _failure_message(rip: int, insn: bytes) -> str:
    return (
        f"KVM could not emulate the guest instruction at RIP {rip:#x} "
        f"(bytes {insn.hex(' ')}). On a KVM-on-PVM host guest kernel code runs "
        "through KVM's instruction emulator, which lacks some instructions: switch "
        "the CPU feature that uses it off on the kernel command line (clearcpuid=...,"
        " noxsave), or use a host with hardware virtualization (VMX/SVM)."
    )
