"""Event delivery at guest CPL 0 on KVM on PVM: what makes it work.

Earlier small probes on this host saw every CPL-0 delivery (a raised #UD, an
injected #BP, an external interrupt) end in KVM_EXIT_SHUTDOWN while a #UD at
CPL 3 reached the CPL-0 handler, yet Linux guests take #BP and timer
interrupts at CPL 0 here. Probing the candidates one at a time found no
PVM-specific enabling condition. A plain set-up delivers all three at CPL 0:
enter_long_mode's GDT, interrupt gates with selector 0x10, IDTR set with
KVM_SET_SREGS, and RSP in writable RAM. It needs no TSS, IST, KVM_SET_CPUID2,
MSRs (GS bases, LSTAR/STAR, boot MSRs), kernel-half mapping, CR4 bits, or
guest `lidt`/`ltr`. The necessary conditions are the architectural ones:

- the CPL-0 stack: without a privilege change the frame goes on the current
  RSP. With RSP = 0 (as KVM leaves it) the push faults and the delivery ends
  in #DF and a triple fault. From CPL 3 the CPU switches to TSS.RSP0, so a
  CPL-3 probe with the same RSP still delivers. This is the only failure found
  that reproduces the old asymmetry (CPL 3 works, CPL 0 shuts down);
- the gate's code selector must be within GDTR.limit and name, in guest
  memory, a descriptor the handler can run under (also in
  test_event_delivery.py). Selector 0x08 is the null slot of enter_long_mode's
  GDT, so it shuts down at CPL 0 and at CPL 3;
- the handler and stack must be reachable at CPL 0: Linux's CR4.SMEP/SMAP on
  enter_long_mode's user-accessible page tables fault every CPL-0 fetch or
  push. (KVM on PVM lists neither in its supported CPUID, so a Linux guest
  here leaves them off; KVM_SET_SREGS accepts them anyway, and they are
  enforced.)

PVM is laxer than hardware, not stricter: it loads CS verbatim from the
gate's descriptor without checking type, P or DPL. A data descriptor becomes
the handler's CS, where hardware raises #GP(selector). A null descriptor
yields a 16-bit CS with limit 0, and the handler's first fetch #GPs over and
over until the frames overwrite the IDT (dmesg: "kvm-pvm: triple fault
delivering vec=8 ... e.vec=11 e.err=42"). Only that quirk is asserted for PVM
alone; everything else holds on hardware-assisted KVM too.
"""

from __future__ import annotations

import struct

import pytest
from guests import DEBUG_EXIT_PORT, STACK_TOP, long_mode_vcpu

import pyfastvm
from pyfastvm.boot.layout import BOOT_GDT_ADDR, PD_ADDR, PD_COUNT, PDPT_ADDR, PML4_ADDR
from pyfastvm.devices import DebugExit
from pyfastvm.testing.tiny_kernel import interrupt_gate, tss_descriptor
from pyfastvm.x86.cpuid import vcpu_cpuid
from pyfastvm.x86.long_mode import (
    KERNEL_CODE_SELECTOR,
    KERNEL_DATA_SELECTOR,
    PAGE_USER,
)

pytestmark = pytest.mark.hwkvm

on_pvm = pytest.mark.skipif(
    not pyfastvm.host.is_pvm_host(), reason="PVM-specific: hardware checks the gate's descriptor"
)

HANDLERS = 0x20000  # handler for vector v at HANDLERS + 16 * v
IDT = 0x30000
TSS = 0x40000
VECTORS = 0x21  # exceptions 0..31 and the timer's vector 0x20
TIMER_VECTOR = 0x20
NULL_SELECTOR_SLOT = 0x08  # left zero in enter_long_mode's GDT
TSS_SELECTOR = 0x30  # a 16-byte system descriptor just past enter_long_mode's GDT
CR4_SMEP, CR4_SMAP = 1 << 20, 1 << 21

UD = 6
BP = 3

# Guest: ud2; jmp $
UD2 = bytes.fromhex("0f0bebfe")
# Guest: int3; jmp $   (a #BP is injected before it runs: on SVM, KVM delivers
# an injected #BP as raised by the INT3 at RIP, and drops it at another instruction)
INT3 = bytes.fromhex("ccebfe")
# Guest: sti; 1: hlt; jmp 1b   (waits for the LAPIC timer)
STI_HLT = bytes.fromhex("fbf4ebfd")


def handler(vector: int) -> bytes:
    """mov al, vector; out 0xf4, al; jmp $   (reports which vector arrived)"""
    return bytes([0xB0, vector, 0xE6, DEBUG_EXIT_PORT, 0xEB, 0xFE])


def guest(
    code: bytes,
    *,
    rsp: int = STACK_TOP,
    user: bool = False,
    gate_selector: int = KERNEL_CODE_SELECTOR,
    irqchip: bool = False,
    cr4: int = 0,
    supervisor_pages: bool = False,
) -> pyfastvm.Vcpu:
    """A vCPU running `code` at CPL 0 (CPL 3 with `user`) with an IDT whose
    gates send every vector to its own reporting handler. With `user`, a TSS
    gives the CPL-0 stack (RSP0); a CPL-0 guest gets no TSS at all. `cr4`
    bits are added to enter_long_mode's; `supervisor_pages` clears U/S in its
    identity map."""
    vm = pyfastvm.Vm(16 << 20)
    if irqchip:
        vm.create_irqchip()
    vm.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit())
    vcpu = long_mode_vcpu(vm, code, user=user)
    if cr4:  # hardware KVM accepts CR4 feature bits only once the guest's CPUID has them
        vcpu.set_cpuid(vcpu_cpuid(vm.kvm.supported_cpuid(), apic_id=0, vcpu_count=1))
    if supervisor_pages:
        for table, count in ((PML4_ADDR, 1), (PDPT_ADDR, PD_COUNT), (PD_ADDR, 512 * PD_COUNT)):
            entries = struct.unpack(f"<{count}Q", vm.memory.read(table, 8 * count))
            vm.memory.write(table, struct.pack(f"<{count}Q", *(e & ~PAGE_USER for e in entries)))
    vm.memory.write(HANDLERS, b"".join(handler(v).ljust(16, b"\x90") for v in range(VECTORS)))
    gates = b"".join(interrupt_gate(HANDLERS + 16 * v, gate_selector) for v in range(VECTORS))
    vm.memory.write(IDT, gates)
    sregs = vcpu.get_sregs()
    sregs.idt.base, sregs.idt.limit = IDT, len(gates) - 1
    sregs.cr4 |= cr4
    if user:
        vm.memory.write(TSS, struct.pack("<IQ", 0, STACK_TOP).ljust(104, b"\0"))
        vm.memory.write(BOOT_GDT_ADDR + TSS_SELECTOR, tss_descriptor(TSS, 103))
        sregs.gdt.limit = TSS_SELECTOR + 15
        tr = sregs.tr
        tr.base, tr.limit, tr.selector, tr.type, tr.present, tr.s = TSS, 103, TSS_SELECTOR, 11, 1, 0
        tr.unusable = 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rsp = rsp
    vcpu.set_regs(regs)
    return vcpu


def start_lapic_timer(vcpu: pyfastvm.Vcpu, vector: int = TIMER_VECTOR) -> None:
    """Software-enables the local APIC and arms a one-shot timer (SDM 3A, 11.5.4)."""
    lapic = bytearray(vcpu.get_lapic())
    for offset, value in (
        (0xF0, 0x1FF),  # spurious vector 0xff, APIC software enable
        (0x80, 0),  # task priority 0
        (0x3E0, 0xB),  # divide by 1
        (0x320, vector),  # LVT timer: one-shot, unmasked
        (0x380, 1000),  # initial count
    ):
        struct.pack_into("<I", lapic, offset, value)
    vcpu.set_lapic(bytes(lapic))


def run_event(event: str, *, rsp: int = STACK_TOP) -> pyfastvm.Vcpu:
    """Sets up `event` at CPL 0: a raised #UD, an injected #BP or a timer interrupt."""
    if event == "raised":
        return guest(UD2, rsp=rsp)
    if event == "injected":
        vcpu = guest(INT3, rsp=rsp)
        vcpu.inject_exception(BP)
        return vcpu
    vcpu = guest(STI_HLT, rsp=rsp, irqchip=True)
    start_lapic_timer(vcpu)
    return vcpu


EXPECTED_VECTOR = {"raised": UD, "injected": BP, "timer": TIMER_VECTOR}
EVENTS = list(EXPECTED_VECTOR)


@pytest.mark.parametrize("event", EVENTS)
def test_a_plain_cpl0_setup_takes_events(event: str) -> None:
    """No TSS, no CPUID, no MSRs, low addresses, IDTR from KVM_SET_SREGS."""
    exit = run_event(event).run()
    assert (exit.reason, exit.status) == ("debug_exit", EXPECTED_VECTOR[event])


@pytest.mark.parametrize("event", EVENTS)
def test_at_cpl0_the_frame_goes_on_the_current_stack(event: str) -> None:
    """RSP = 0: the push faults (#PF, #DF, #PF), so the vCPU shuts down."""
    assert run_event(event, rsp=0).run().reason == "shutdown"


def test_from_cpl3_the_frame_goes_on_tss_rsp0() -> None:
    """The same RSP = 0 from CPL 3: delivery switches to TSS.RSP0 and works,
    which is why CPL-3 probes delivered while CPL-0 ones shut down."""
    exit = guest(UD2, rsp=0, user=True).run()
    assert (exit.reason, exit.status) == ("debug_exit", UD)


@pytest.mark.parametrize("user", [False, True], ids=["cpl0", "cpl3"])
def test_a_gate_naming_the_null_descriptor_shuts_down(user: bool) -> None:
    vcpu = guest(UD2, user=user, gate_selector=NULL_SELECTOR_SLOT)
    assert vcpu.run().reason == "shutdown"


@pytest.mark.parametrize("supervisor_pages", [False, True], ids=["user-pages", "supervisor-pages"])
def test_linux_cr4_smep_smap_need_supervisor_pages(supervisor_pages: bool) -> None:
    """Linux's CR4.SMEP/SMAP: CPL 0 may neither fetch from nor push to
    user-accessible pages, and enter_long_mode's identity map is user-accessible."""
    try:
        vcpu = guest(UD2, cr4=CR4_SMEP | CR4_SMAP, supervisor_pages=supervisor_pages)
    except pyfastvm.KvmError:  # hardware KVM without SMEP/SMAP refuses the CR4 bits
        pytest.skip("KVM refuses CR4.SMEP/SMAP")
    exit = vcpu.run()
    if supervisor_pages:
        assert (exit.reason, exit.status) == ("debug_exit", UD)
    else:
        assert exit.reason == "shutdown"


@on_pvm
def test_pvm_loads_the_gates_descriptor_unchecked() -> None:
    """A gate naming a data descriptor: hardware raises #GP(selector) (and
    shuts down); PVM loads it as the handler's CS and runs the handler."""
    vcpu = guest(UD2, gate_selector=KERNEL_DATA_SELECTOR)
    exit = vcpu.run()
    assert (exit.reason, exit.status) == ("debug_exit", UD)
    cs = vcpu.get_sregs().cs
    assert (cs.selector, cs.type, cs.l) == (KERNEL_DATA_SELECTOR, 0x3, 0)
