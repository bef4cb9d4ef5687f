"""The x86 state pyfastvm gives a Linux guest: CPUID, MSRs, the local APIC
pins and the kernel command line, on this host's profile."""

import threading

import pytest
from guests import CODE_ADDRESS, DEBUG_EXIT_PORT, long_mode_vcpu

import pyfastvm
from pyfastvm.boot.cmdline import kernel_cmdline
from pyfastvm.devices import DebugExit
from pyfastvm.host import PVM, host_profile
from pyfastvm.x86.cpuid import (
    HYPERCALL_FEATURES,
    KVM_FEATURES_LEAF,
    KVM_SIGNATURE_LEAF,
    cpu_vendor,
    missing_features,
    vcpu_cpuid,
)
from pyfastvm.x86.lapic import APIC_LVT_LINT0, APIC_LVT_LINT1, wire_local_interrupts
from pyfastvm.x86.msrs import IA32_MISC_ENABLE, boot_msrs

pytestmark = pytest.mark.hwkvm


def leaves(entries: list[pyfastvm.CpuidEntry]) -> dict[tuple[int, int], pyfastvm.CpuidEntry]:
    return {(e.function, e.index): e for e in entries}


def test_cpuid_names_kvm_and_each_vcpus_apic_id() -> None:
    supported = pyfastvm.Kvm().supported_cpuid()
    for apic_id in (0, 3):
        cpuid = leaves(vcpu_cpuid(supported, apic_id=apic_id, vcpu_count=4))
        signature = cpuid[(KVM_SIGNATURE_LEAF, 0)]
        name = b"".join(
            r.to_bytes(4, "little") for r in (signature.ebx, signature.ecx, signature.edx)
        )
        assert name == b"KVMKVMKVM\0\0\0" and signature.eax >= KVM_FEATURES_LEAF
        assert cpuid[(1, 0)].ebx >> 24 == apic_id
        assert cpuid[(1, 0)].ecx & 1 << 31  # hypervisor present
        assert (KVM_FEATURES_LEAF, 0) in cpuid
        if (0x80000007, 0) in cpuid:
            assert not cpuid[(0x80000007, 0)].edx & 1 << 8  # no invariant TSC: kvm-clock stays


def test_cpuid_topology_is_one_package_of_single_thread_cores() -> None:
    """Leaf 0xB as Linux reads it: SMT level of 1 thread (shift 0), core
    level of 6 cores (shift 3), each vCPU's x2APIC id in EDX; leaf 1 counts
    6 logical processors with HTT; leaf 4 counts 6 cores."""
    supported = pyfastvm.Kvm().supported_cpuid()
    cpuid = leaves(vcpu_cpuid(supported, apic_id=5, vcpu_count=6))
    smt, core = cpuid[(0xB, 0)], cpuid[(0xB, 1)]
    assert (smt.eax, smt.ebx, smt.ecx >> 8 & 0xFF, smt.edx) == (0, 1, 1, 5)
    assert (core.eax, core.ebx, core.ecx >> 8 & 0xFF, core.edx) == (3, 6, 2, 5)
    assert smt.flags == core.flags == 1  # the subleaf index is significant
    assert cpuid[(1, 0)].ebx >> 16 & 0xFF == 6 and cpuid[(1, 0)].edx & 1 << 28
    if (4, 0) in cpuid:
        assert cpuid[(4, 0)].eax >> 26 == 5
    single = leaves(vcpu_cpuid(supported, apic_id=0, vcpu_count=1))
    assert (single[(0xB, 1)].eax, single[(0xB, 1)].ebx) == (0, 1)
    assert not single[(1, 0)].edx & 1 << 28


KVM_HC_VAPIC_POLL_IRQ = 1
# mov eax, KVM_HC_VAPIC_POLL_IRQ; vmcall; out 0xf4, al   (the hypercall returns 0)
VMCALL = bytes.fromhex("b801000000") + bytes.fromhex("0f01c1") + bytes([0xE6, DEBUG_EXIT_PORT])
VMCALL_AT = CODE_ADDRESS + 5


def test_a_vmcall_at_cpl0_completes_only_with_hardware_virtualization() -> None:
    """Why pyfastvm hides KVM's hypercall-based paravirt features on PVM
    hosts: there KVM re-enters the guest at the VMCALL without end (a 2-vCPU
    Linux guest hung in KVM_HC_SEND_IPI)."""
    vm = pyfastvm.Vm(16 << 20)
    vm.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit())
    vcpu = long_mode_vcpu(vm, VMCALL)
    timer = threading.Timer(1.0, vcpu.stop)
    timer.start()
    try:
        exit = vcpu.run()
    finally:
        timer.cancel()
    if host_profile().is_pvm:
        assert (exit.reason, vcpu.get_regs().rip) == ("stopped", VMCALL_AT)
    else:
        assert (exit.reason, exit.status) == ("debug_exit", 0)


def test_hypercall_features_are_hidden_only_on_pvm_hosts() -> None:
    supported = pyfastvm.Kvm().supported_cpuid()
    offered = leaves(supported).get((KVM_FEATURES_LEAF, 0))
    assert PVM.hidden_kvm_features == HYPERCALL_FEATURES
    for hidden in (0, HYPERCALL_FEATURES):
        entries = vcpu_cpuid(supported, apic_id=0, vcpu_count=2, hidden_kvm_features=hidden)
        eax = leaves(entries)[(KVM_FEATURES_LEAF, 0)].eax
        if hidden:
            assert not eax & HYPERCALL_FEATURES
        elif offered is not None:
            assert eax == offered.eax


def test_cpuid_and_boot_state_are_accepted_by_kvm() -> None:
    vm = pyfastvm.Vm(16 << 20)
    vm.create_irqchip()
    vcpu = vm.create_vcpu(0)
    vcpu.set_cpuid(vcpu_cpuid(vm.kvm.supported_cpuid(), apic_id=0, vcpu_count=1))
    vcpu.set_msrs(boot_msrs())
    assert vcpu.get_msrs([IA32_MISC_ENABLE])[IA32_MISC_ENABLE] & 1
    wire_local_interrupts(vcpu)
    lapic = vcpu.get_lapic()
    lint = [
        int.from_bytes(lapic[o : o + 4], "little") >> 8 & 7
        for o in (APIC_LVT_LINT0, APIC_LVT_LINT1)
    ]
    assert lint == [0b111, 0b100]  # ExtINT, NMI


def test_kernel_cmdline_is_pyfastvms_then_the_machines_then_the_users() -> None:
    assert kernel_cmdline() == "panic=-1 cryptomgr.notests"
    line = kernel_cmdline("quiet", extra_args=PVM.kernel_args)
    assert "noxsave" in line and "clearcpuid=" in line and "nowatchdog" in line
    assert line.startswith("panic=-1") and line.endswith("quiet")


def test_features_the_host_lacks_are_named() -> None:
    """A snapshot's guest restores only where every feature it was given is
    offered; the bits pyfastvm or KVM set themselves do not count."""
    host = [pyfastvm.CpuidEntry(function=7, index=0, ebx=0b0101), pyfastvm.CpuidEntry(function=1)]
    guest = [
        pyfastvm.CpuidEntry(function=7, index=0, ebx=0b0111),
        pyfastvm.CpuidEntry(function=1, ecx=1 << 31 | 1 << 27, edx=1 << 28 | 1 << 9),
    ]
    assert missing_features(guest, host) == ["leaf 0x7.0 ebx 0x2"]
    assert missing_features(host, host) == []
    assert cpu_vendor(pyfastvm.Kvm().supported_cpuid()) in ("GenuineIntel", "AuthenticAMD")
