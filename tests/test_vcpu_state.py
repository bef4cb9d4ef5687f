"""A vCPU's whole state: saved in one call, restored into a fresh vCPU of a
new VM, compared field by field; its JSON form and its refusals."""

import json
import struct
from typing import Any

import pytest
from guests import (
    DEBUG_EXIT_PORT,
    LONG_SPIN,
    LONG_TWO_DEBUG_EXITS,
    LONG_XMM3_ACROSS_AN_EXIT,
    long_mode_vcpu,
)

import pyfastvm
from pyfastvm.devices import DebugExit

pytestmark = pytest.mark.hwkvm

MSR_IA32_TSC = 0x10
# MSRs that count on their own where KVM lists them: TSC, MPERF, APERF, and
# the Hyper-V VP runtime and reference time counter (listed on SVM hosts).
COUNTING_MSRS = {MSR_IA32_TSC, 0xE7, 0xE8, 0x4000_0010, 0x4000_0020}
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_EIP = 0x176
MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_KERNEL_GS_BASE = 0xC000_0102
MSR_KVM_SYSTEM_TIME_NEW = 0x4B56_4D01  # enables kvmclock, its page at 0x30000
DISTINCT_MSRS = {
    MSR_KVM_SYSTEM_TIME_NEW: 0x30001,
    MSR_IA32_SYSENTER_CS: 0x10,
    MSR_IA32_SYSENTER_EIP: 0x1234_5678,
    MSR_STAR: 0x0023_0010_0000_0000,
    MSR_LSTAR: 0xFFFF_FFFF_8100_0000,
    MSR_KERNEL_GS_BASE: 0xFFFF_8880_0000_0000,
}
APIC_TPR = 0x80
AN_HOUR_OF_TSC = 3600 * 3_000_000_000
NMI_PENDING = 13  # offset of nmi.pending in struct kvm_vcpu_events
EXCEPTION_NR, EXCEPTION_HAS_ERROR_CODE, EXCEPTION_ERROR_CODE = 1, 2, 4
GENERAL = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"]
REG_NAMES = [*GENERAL, *(f"r{n}" for n in range(8, 16)), "rip", "rflags"]
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
SEGMENT_FIELDS = ["base", "limit", "selector", "type", "present", "dpl"]
SEGMENT_FIELDS += ["db", "s", "l", "g", "avl", "unusable"]


def machine() -> pyfastvm.Vm:
    vm = pyfastvm.Vm(16 << 20)
    vm.create_irqchip()
    return vm


def distinctive_vcpu(vm: pyfastvm.Vm) -> pyfastvm.Vcpu:
    """A 64-bit vCPU with values in every part of its state that a fresh one lacks."""
    vcpu = long_mode_vcpu(vm, LONG_SPIN)
    vcpu.set_cpuid(pyfastvm.Kvm().supported_cpuid())
    regs = pyfastvm.Regs(**{name: 0x1111 * (i + 1) for i, name in enumerate(REG_NAMES)})
    regs.rip, regs.rflags = 0x10000, 0x202
    vcpu.set_regs(regs)
    vcpu.set_msrs(DISTINCT_MSRS)
    # A TSC as far on as a guest's that has run for an hour: KVM takes a
    # host-side TSC write within a second of a new vCPU's own as a request
    # to synchronise with it (kvm_synchronize_tsc) and keeps its own value.
    vcpu.set_msrs({MSR_IA32_TSC: AN_HOUR_OF_TSC})
    lapic = bytearray(vcpu.get_lapic())
    lapic[APIC_TPR] = 0x20
    vcpu.set_lapic(bytes(lapic))
    return vcpu


def restored(state: pyfastvm.VcpuState) -> tuple[pyfastvm.Vm, pyfastvm.Vcpu]:
    """A fresh vCPU of a new VM in `state`."""
    vm = machine()
    vcpu = vm.create_vcpu(0)
    vcpu.restore_state(state)
    return vm, vcpu


def edited(state: pyfastvm.VcpuState, field: str, data: bytes) -> pyfastvm.VcpuState:
    """`state` with one kernel struct replaced, through its JSON form."""
    document = json.loads(state.to_json())
    document["state"][field] = list(data)
    return pyfastvm.VcpuState.from_json(json.dumps(document))


def segment(sregs: pyfastvm.Sregs, name: str) -> tuple[int, ...]:
    return tuple(getattr(getattr(sregs, name), field) for field in SEGMENT_FIELDS)


def assert_same_sregs(a: pyfastvm.Sregs, b: pyfastvm.Sregs) -> None:
    for name in SEGMENTS:
        assert segment(a, name) == segment(b, name), name
    for table in ("gdt", "idt"):
        assert (getattr(a, table).base, getattr(a, table).limit) == (
            getattr(b, table).base,
            getattr(b, table).limit,
        )
    for field in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base", "interrupt_bitmap"):
        assert getattr(a, field) == getattr(b, field), field


def cpuid(state: pyfastvm.VcpuState) -> list[tuple[int, ...]]:
    return [(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in state.cpuid]


def test_every_part_of_a_vcpu_comes_back_in_a_fresh_vcpu_of_a_new_vm(vm: pyfastvm.Vm) -> None:
    vm.create_irqchip()
    saved = distinctive_vcpu(vm).save_state()
    _, vcpu = restored(saved)
    again = vcpu.save_state()

    for name in REG_NAMES:
        assert getattr(again.regs, name) == getattr(saved.regs, name), name
    assert saved.regs.rax == 0x1111 and saved.regs.r15 == 0x1111 * 16
    assert_same_sregs(saved.sregs, again.sregs)
    assert saved.sregs.efer & 0x500 == 0x500  # long mode, active
    assert again.xsave == saved.xsave and again.fpu == saved.fpu is None
    assert again.xcrs == saved.xcrs and saved.xcrs is not None and saved.xcrs[0] & 1
    assert again.lapic == saved.lapic and saved.lapic is not None
    assert saved.lapic[APIC_TPR] == 0x20
    assert (again.mp_state, again.debugregs, again.vcpu_events) == (
        saved.mp_state,
        saved.debugregs,
        saved.vcpu_events,
    )
    assert cpuid(again) == cpuid(saved) and len(saved.cpuid) > 10
    assert again.tsc_khz == saved.tsc_khz
    assert again.unreadable_msrs == saved.unreadable_msrs


def test_every_readable_msr_comes_back_and_the_tsc_goes_on(vm: pyfastvm.Vm) -> None:
    vm.create_irqchip()
    original = distinctive_vcpu(vm)
    saved = original.save_state()
    _, vcpu = restored(saved)
    again = vcpu.save_state()
    assert DISTINCT_MSRS.items() <= saved.msrs.items()
    assert again.msrs.keys() == saved.msrs.keys()
    differing = {i for i in saved.msrs if again.msrs[i] != saved.msrs[i]}
    assert differing <= COUNTING_MSRS
    # The TSC goes on from the saved value, behind the original's, which
    # kept running through the restore.
    later = original.get_msrs([MSR_IA32_TSC])[MSR_IA32_TSC]
    assert saved.msrs[MSR_IA32_TSC] <= again.msrs[MSR_IA32_TSC] < later


def test_debug_registers_come_back(vm: pyfastvm.Vm) -> None:
    vm.create_irqchip()
    saved = distinctive_vcpu(vm).save_state()
    # DR0-DR3, DR6 with its fixed bits, DR7 with local breakpoint 0 enabled.
    debugregs = struct.pack("<6Q", 0x1000, 0x2000, 0x3000, 0x4000, 0xFFFF0FF0, 0x401)
    debugregs += saved.debugregs[len(debugregs) :]
    _, vcpu = restored(edited(saved, "debugregs", debugregs))
    assert vcpu.save_state().debugregs[:48] == debugregs[:48]


def test_a_pending_exception_and_nmi_come_back(vm: pyfastvm.Vm) -> None:
    vm.create_irqchip()
    original = distinctive_vcpu(vm)
    original.inject_exception(13, error_code=0x18)
    saved = original.save_state()
    events = bytearray(saved.vcpu_events)
    assert (events[EXCEPTION_NR], events[EXCEPTION_HAS_ERROR_CODE]) == (13, 1)
    events[NMI_PENDING] = 1
    _, vcpu = restored(edited(saved, "vcpu_events", bytes(events)))
    again = vcpu.save_state().vcpu_events
    assert again[EXCEPTION_NR] == 13 and again[NMI_PENDING] == 1
    assert struct.unpack_from("<I", again, EXCEPTION_ERROR_CODE)[0] == 0x18


def test_a_vcpu_stopped_at_a_port_write_is_saved_past_it(vm: pyfastvm.Vm) -> None:
    """The exit a device ended the run at completes before the save: the
    restored vCPU goes on after the OUT instead of writing again."""
    vm.add_pio_device(DEBUG_EXIT_PORT, 4, DebugExit())
    vcpu = long_mode_vcpu(vm, LONG_TWO_DEBUG_EXITS)
    assert vcpu.run().status == 42
    state = vcpu.save_state()
    assert state.regs.rip == 0x10000 + 7  # past `out 0xf4, eax`

    assert copy_of(vm, state).run().status == 7
    assert vcpu.run().status == 7  # the original goes on the same way


def copy_of(vm: pyfastvm.Vm, state: pyfastvm.VcpuState) -> pyfastvm.Vcpu:
    """A new VM with `vm`'s RAM and a debug-exit port, its vCPU in `state`."""
    other = pyfastvm.Vm(vm.memory_size)
    other.memory.write(0, vm.memory.read(0, vm.memory_size))
    other.add_pio_device(DEBUG_EXIT_PORT, 4, DebugExit())
    vcpu = other.create_vcpu(0)
    vcpu.restore_state(state)
    return vcpu


def test_the_guests_sse_registers_come_back(vm: pyfastvm.Vm) -> None:
    """The FPU state the guest itself set, saved in the XSAVE area."""
    vm.add_pio_device(DEBUG_EXIT_PORT, 4, DebugExit())
    vcpu = long_mode_vcpu(vm, LONG_XMM3_ACROSS_AN_EXIT, user=True)
    assert vcpu.run().status == 0x5566_7788
    state = vcpu.save_state()
    assert state.xsave is not None
    xmm3 = 160 + 3 * 16  # the legacy region's XMM registers (Intel SDM vol. 1, 13.4.1)
    assert state.xsave[xmm3 : xmm3 + 8] == (0x1122_3344_5566_7788).to_bytes(8, "little")
    assert copy_of(vm, state).run().status == 0x1122_3344


def test_a_vcpu_without_an_in_kernel_apic_saves_none_and_cannot_take_one(
    vm: pyfastvm.Vm,
) -> None:
    state = vm.create_vcpu(0).save_state()
    assert state.lapic is None and state.cpuid == []
    restored(state)  # into a VM with the irqchip: the new vCPU keeps its own APIC
    with_apic = distinctive_vcpu(machine()).save_state()
    with pytest.raises(pyfastvm.InvalidArgumentError, match=r"vm\.create_irqchip\(\)"):
        pyfastvm.Vm(16 << 20).create_vcpu(0).restore_state(with_apic)


def test_the_json_form_is_versioned_and_round_trips(vm: pyfastvm.Vm) -> None:
    state = vm.create_vcpu(0).save_state()
    text = state.to_json()
    document: dict[str, Any] = json.loads(text)
    assert (document["format"], document["version"]) == (
        "pyfastvm.VcpuState",
        pyfastvm.VcpuState.VERSION,
    )
    assert len(document["state"]["regs"]) == 144  # struct kvm_regs, byte by byte
    assert pyfastvm.VcpuState.from_json(text).to_json() == text
    assert state.to_document() == document
    assert pyfastvm.VcpuState.from_document(document).to_json() == text


def test_a_document_is_checked_as_its_json_is(vm: pyfastvm.Vm) -> None:
    document = vm.create_vcpu(0).save_state().to_document()
    document["version"] = pyfastvm.VcpuState.VERSION + 1
    with pytest.raises(pyfastvm.InvalidArgumentError, match="format version"):
        pyfastvm.VcpuState.from_document(document)
    with pytest.raises(pyfastvm.InvalidArgumentError, match="not a pyfastvm.VcpuState"):
        pyfastvm.VcpuState.from_document(vm.save_state().to_document())
    with pytest.raises(pyfastvm.InvalidArgumentError, match="must be JSON-compatible"):
        pyfastvm.VcpuState.from_document({"format": b"bytes"})


def test_another_version_or_damaged_json_is_refused(vm: pyfastvm.Vm) -> None:
    text = vm.create_vcpu(0).save_state().to_json()
    document = json.loads(text)
    document["version"] = pyfastvm.VcpuState.VERSION + 1
    with pytest.raises(pyfastvm.InvalidArgumentError, match="format version"):
        pyfastvm.VcpuState.from_json(json.dumps(document))
    with pytest.raises(ValueError, match="not a valid pyfastvm.VcpuState"):
        pyfastvm.VcpuState.from_json(text[: len(text) // 2])
    del document["state"]["regs"]
    document["version"] = pyfastvm.VcpuState.VERSION
    with pytest.raises(pyfastvm.InvalidArgumentError, match="missing field `regs`"):
        pyfastvm.VcpuState.from_json(json.dumps(document))
    with pytest.raises(pyfastvm.InvalidArgumentError, match="not a pyfastvm.VcpuState"):
        pyfastvm.VcpuState.from_json(vm.save_state().to_json())


def test_the_mp_state_comes_back_whichever_it_was(vm: pyfastvm.Vm) -> None:
    vm.create_irqchip()
    running = vm.create_vcpu(0).save_state()
    waiting = vm.create_vcpu(1).save_state()
    assert (running.mp_state, waiting.mp_state) == (0, 1)  # runnable; waiting for INIT/SIPI
    other = machine()
    other.create_vcpu(0)
    for state in (running, waiting):
        ap = other.create_vcpu(state.mp_state + 1)  # a fresh AP: itself waiting
        ap.restore_state(state)
        assert ap.save_state().mp_state == state.mp_state
