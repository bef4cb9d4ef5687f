"""System calls from guest user mode: a tiny kernel sets IA32_STAR and
IA32_LSTAR, drops to user mode with SYSRETQ, and its user program makes a
SYSCALL and then touches an unmapped page.

On hardware KVM the CPU does all of it. On KVM on PVM a SYSCALL stays at
CPL 3 and faults on the kernel's entry; the "syscall" exit assist (see
rust/src/assist/syscall.rs) learns the entry from the guest's IA32_LSTAR
write, hooks the #PF gate at the INT3 padding in front of the entry, and
completes the SYSCALL there, while every other #PF goes on to the kernel's
own handler. Either way the guest must see exactly what a CPU gives it.
"""

from __future__ import annotations

import dataclasses

import pytest
from guests import DEBUG_EXIT_PORT, Recorder

import pyfastvm
from pyfastvm.builder import default_init_chain
from pyfastvm.devices import DebugExit
from pyfastvm.guest.minimal_kernel import minimal_kernel
from pyfastvm.host import HARDWARE, PVM, host_profile
from pyfastvm.testing.tiny_kernel import (
    PAGE_FAULT,
    PAGE_FAULT_HANDLER,
    SYSCALL_BOOT,
    SYSCALL_ENTRY,
    USER_CODE,
    USER_RFLAGS,
    USER_STACK,
    TinyKernel,
    interrupt_gate,
)
from pyfastvm.x86.long_mode import KERNEL_CODE_SELECTOR, USER_CODE_SELECTOR
from pyfastvm.x86.msrs import MSR_LSTAR

pytestmark = pytest.mark.hwkvm

PROFILE = host_profile()
on_pvm = pytest.mark.skipif(
    not PROFILE.is_pvm,
    reason="hardware KVM completes SYSCALL itself: pyfastvm installs no hook to test there",
)

REPORT_PORT = 0xF0  # the kernel's reports
REPORT_MMIO = 0xD000_0000  # user mode's, without I/O privilege
UNMAPPED = 0x1_4000_0000  # beyond the 4 GiB that enter_long_mode maps

# The syscall entry, at CPL 0 only: mov rax, cr0 (privileged); mov dx, 0xf0;
#   report ecx, r11d, esp and cs; lea rax, [rdi + 1]; sysretq
REPORTING_ENTRY = bytes.fromhex("0f20c066baf00089c8ef4489d8ef89e0ef8cc8ef488d4701480f07")
# #PF handler: mov dx, 0xf0; report [rsp] (error code), cr2 low and high
#   halves, [rsp + 16] (the CS pushed); mov al, 14; out 0xf4, al; jmp $-28
REPORTING_PAGE_FAULT_HANDLER = bytes.fromhex(
    "66baf0008b0424ef0f20d0ef48c1e820ef8b442410efb00ee6f4ebe4"
)
# User mode: mov edi, 41; syscall; mov ebx, REPORT_MMIO; mov [rbx], eax (the
#   result); movabs rax, UNMAPPED; mov eax, [rax]; jmp $-28
USER_PROGRAM = bytes.fromhex("bf290000000f05bb000000d0890348b800000040010000008b00ebe4")
SYSCALL_RETURNS_TO = USER_CODE + 7
GUEST = TinyKernel(
    boot=SYSCALL_BOOT,
    syscall_entry=REPORTING_ENTRY,
    page_fault_handler=REPORTING_PAGE_FAULT_HANDLER,
    user_program=USER_PROGRAM,
)


def run(guest: TinyKernel = GUEST) -> tuple[pyfastvm.Vm, pyfastvm.Vcpu, pyfastvm.Exit, list[int]]:
    """Runs `guest` with this host's exit assists; returns its reports."""
    vm = pyfastvm.Vm(16 << 20)
    vm.enable_exit_assists(list(PROFILE.exit_assists))
    reports = Recorder()
    vm.add_pio_device(REPORT_PORT, 4, reports)
    vm.add_mmio_device(REPORT_MMIO, 4, reports)
    vm.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit())
    vcpu = guest.load(vm)
    exit = vcpu.run()
    return vm, vcpu, exit, [int.from_bytes(data, "little") for _, data in reports.writes]


def test_a_syscall_enters_the_kernel_at_cpl0_as_the_cpu_would() -> None:
    """The entry runs a privileged instruction, and sees RCX = the return
    RIP, R11 = the user's RFLAGS, the user's RSP and the kernel's CS; its
    SYSRETQ brings 41 + 1 back to user mode."""
    _, vcpu, exit, reports = run()
    assert exit.reason == "debug_exit", exit
    rcx, r11, rsp, cs, result = reports[:5]
    assert (rcx, r11, rsp) == (SYSCALL_RETURNS_TO, USER_RFLAGS, USER_STACK)
    assert (cs, result) == (KERNEL_CODE_SELECTOR, 42)
    assert vcpu.get_msrs([MSR_LSTAR]) == {MSR_LSTAR: SYSCALL_ENTRY}


def test_a_user_page_fault_reaches_the_kernels_own_handler() -> None:
    """Not a SYSCALL: the kernel's handler gets the CPU's frame, error code 4
    (a user-mode read of a page not present) and CR2."""
    _, _, exit, reports = run()
    assert (exit.reason, exit.status) == ("debug_exit", PAGE_FAULT)
    error_code, cr2_low, cr2_high, frame_cs = reports[5:]
    assert error_code == 4
    assert cr2_high << 32 | cr2_low == UNMAPPED
    assert frame_cs == USER_CODE_SELECTOR


@on_pvm
def test_the_assist_counts_one_syscall_and_one_page_fault() -> None:
    counts = run()[0].exit_assist_counts()
    assert (counts["syscall"], counts["page_fault"]) == (1, 1)


@on_pvm
def test_an_entry_without_int3_padding_is_a_host_limitation() -> None:
    nop_padded = dataclasses.replace(GUEST, padding=b"\x90" * 16)
    with pytest.raises(pyfastvm.HostLimitationError, match="not preceded .* by INT3 padding"):
        run(nop_padded)


@on_pvm
def test_a_page_fault_gate_that_is_not_the_kernels_is_left_alone() -> None:
    user_gate = interrupt_gate(PAGE_FAULT_HANDLER, dpl=3)
    guest = dataclasses.replace(GUEST, page_fault_gate=user_gate)
    with pytest.raises(pyfastvm.HostLimitationError, match="#PF gate is not the kernel's"):
        run(guest)


def test_exit_assists_are_set_up_only_on_pvm_hosts() -> None:
    """On hardware KVM the init chain has no assist step, and the VM neither
    filters MSRs nor hooks a gate."""
    assert ("base", "exit-assists") in default_init_chain(PVM).steps()
    assert ("base", "exit-assists") not in default_init_chain(HARDWARE).steps()
    machine = pyfastvm.MicroVM(pyfastvm.VMConfig(kernel=minimal_kernel()))
    machine.chain.run(machine.context)  # built, not started
    try:
        assert machine.context.vm.exit_assists == list(PROFILE.exit_assists)
    finally:
        machine.close()
