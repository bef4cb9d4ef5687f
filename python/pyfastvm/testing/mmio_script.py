"""A tiny 64-bit guest that performs a script of MMIO accesses, for driving
a device by hand from a test or a benchmark: the steps are 16-byte records
in guest memory (op, value, address), and the guest writes, reads (storing
the value read back into its record) or waits for a 16-bit word in memory to
reach a value (a used ring's index), then ends its run on the debug-exit
port. Every access is a real guest access: MMIO exits to the VMM, or
writes KVM completes itself (ioeventfd)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .._core import Regs, Vcpu, Vm
from ..x86.long_mode import enter_long_mode

CODE_ADDRESS = 0x10000
SCRIPT_ADDRESS = 0x20000
STACK_TOP = 0x8000
OP_END, OP_WRITE, OP_READ, OP_WAIT16 = 0, 1, 2, 3
STEP = struct.Struct("<IIQ")

#     mov ebx, SCRIPT_ADDRESS
# next:
#     mov eax, [rbx]            ; op
#     mov ecx, [rbx + 4]        ; value
#     mov rdx, [rbx + 8]        ; address
#     cmp eax, 1
#     je write
#     cmp eax, 2
#     je read
#     cmp eax, 3
#     je wait
#     out 0xf4, al              ; OP_END: debug exit
# write:
#     mov [rdx], ecx
#     jmp advance
# read:
#     mov ecx, [rdx]
#     mov [rbx + 4], ecx
#     jmp advance
# wait:
#     movzx esi, word ptr [rdx]
#     cmp esi, ecx
#     jne wait
# advance:
#     add rbx, 16
#     jmp next
INTERPRETER = bytes.fromhex(
    "bb000002008b038b4b04488b530883f801740c83f802740b83f803740de6f4"
    "890aeb0e8b0a894b04eb070fb73239ce75f94883c310ebce"
)


@dataclass
class MmioScript:
    """The steps, built in order; `read` returns the index to look the
    value up by in `results`."""

    steps: list[tuple[int, int, int]] = field(default_factory=list)

    def write(self, address: int, value: int) -> None:
        self.steps.append((OP_WRITE, value, address))

    def read(self, address: int) -> int:
        self.steps.append((OP_READ, 0, address))
        return len(self.steps) - 1

    def wait16(self, address: int, value: int) -> None:
        """Spins until the 16-bit word at `address` (in RAM) is `value`."""
        self.steps.append((OP_WAIT16, value, address))

    def encode(self) -> bytes:
        return b"".join(STEP.pack(*step) for step in [*self.steps, (OP_END, 0, 0)])


def script_vcpu(vm: Vm, script: MmioScript) -> Vcpu:
    """vCPU 0 of `vm`, in long mode, ready to run `script`."""
    vm.memory.write(CODE_ADDRESS, INTERPRETER)
    vm.memory.write(SCRIPT_ADDRESS, script.encode())
    vcpu = vm.create_vcpu(0)
    enter_long_mode(vcpu, vm.memory)
    vcpu.set_regs(Regs(rip=CODE_ADDRESS, rsp=STACK_TOP, rflags=2))
    return vcpu


def results(vm: Vm, script: MmioScript) -> list[int]:
    """Each step's value after the run: what the guest read, for reads."""
    data = vm.memory.read(SCRIPT_ADDRESS, STEP.size * len(script.steps))
    return [STEP.unpack_from(data, i * STEP.size)[1] for i in range(len(script.steps))]
