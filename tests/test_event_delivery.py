"""Exceptions delivered to a guest handler at CPL 0, raised by the guest or
injected (test_exit_assists.py has the #BP that completes an INT3 on PVM).

Delivery reloads CS from the gate selector's descriptor in the guest's
in-memory GDT; the hidden segment state set with KVM_SET_SREGS is not enough.
test_pvm_event_delivery.py has the whole story of why earlier probes on PVM
hosts saw CPL-0 deliveries shut down (a CPL-0 stack at RSP 0 among them)."""

from __future__ import annotations

import pytest
from guests import DEBUG_EXIT_PORT, long_mode_vcpu

import pyfastvm
from pyfastvm.devices import DebugExit
from pyfastvm.testing.tiny_kernel import interrupt_gate
from pyfastvm.x86.long_mode import GDT_ADDRESS, KERNEL_CODE_SELECTOR

pytestmark = pytest.mark.hwkvm

HANDLER = 0x20000
IDT = 0x30000
# Handler: mov al, 0x33; out 0xf4, al   (reports that it ran)
HANDLER_CODE = bytes.fromhex("b033e6f4")
HANDLED = 0x33
# Guest: ud2; jmp $
UD2 = bytes.fromhex("0f0bebfe")
# Guest: int3; jmp $   (also where a #BP is injected before the guest runs: on
# SVM, KVM delivers an injected #BP as raised by the INT3 at RIP, skipping
# it, and drops the #BP when RIP is at another instruction)
INT3 = bytes.fromhex("ccebfe")


def guest_with_idt(code: bytes, *, gdt_in_memory: bool = True) -> tuple[pyfastvm.Vm, pyfastvm.Vcpu]:
    vm = pyfastvm.Vm(16 << 20)
    vm.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit())
    vcpu = long_mode_vcpu(vm, code)
    vm.memory.write(HANDLER, HANDLER_CODE)
    gates = b"".join(interrupt_gate(HANDLER, KERNEL_CODE_SELECTOR) for _ in range(32))
    vm.memory.write(IDT, gates)
    sregs = vcpu.get_sregs()
    sregs.idt.base, sregs.idt.limit = IDT, len(gates) - 1
    vcpu.set_sregs(sregs)
    if not gdt_in_memory:
        vm.memory.write(GDT_ADDRESS, bytes(sregs.gdt.limit + 1))
    return vm, vcpu


def test_an_injected_breakpoint_reaches_the_cpl0_handler() -> None:
    _, vcpu = guest_with_idt(INT3)
    vcpu.inject_exception(3)
    exit = vcpu.run()
    assert (exit.reason, exit.status) == ("debug_exit", HANDLED)


def test_a_guest_exception_reaches_the_cpl0_handler() -> None:
    _, vcpu = guest_with_idt(UD2)
    assert vcpu.run().status == HANDLED


@pytest.mark.parametrize("injected", [True, False], ids=["injected", "raised"])
def test_without_the_gdt_in_memory_delivery_shuts_down(injected: bool) -> None:
    _, vcpu = guest_with_idt(INT3 if injected else UD2, gdt_in_memory=False)
    if injected:
        vcpu.inject_exception(3)
    assert vcpu.run().reason == "shutdown"
