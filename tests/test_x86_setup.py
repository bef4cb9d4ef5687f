"""The x86 state pyfastvm gives a Linux guest: CPUID, MSRs, the local APIC
pins, the kernel command line, and the decoding behind emulation assists."""

import pytest

import pyfastvm
from pyfastvm.boot.cmdline import kernel_cmdline
from pyfastvm.x86.cpuid import KVM_FEATURES_LEAF, KVM_SIGNATURE_LEAF, vcpu_cpuid
from pyfastvm.x86.emulation_assist import decode_memory_operand
from pyfastvm.x86.lapic import APIC_LVT_LINT0, APIC_LVT_LINT1, wire_local_interrupts
from pyfastvm.x86.msrs import IA32_MISC_ENABLE, boot_msrs


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


def test_kernel_cmdline_adds_pvm_workarounds_only_there() -> None:
    assert "console=ttyS0" in kernel_cmdline()
    assert "noxsave" not in kernel_cmdline("quiet")
    line = kernel_cmdline("quiet", pvm_host=True)
    assert "noxsave" in line and "clearcpuid=" in line and line.endswith("quiet")


@pytest.mark.parametrize(
    "insn, address, length",
    [
        (bytes.fromhex("0fae542404"), 0x8000 + 4, 5),  # ldmxcsr [rsp+4]
        (bytes.fromhex("0fae10"), 0x1000, 3),  # ldmxcsr [rax]
        (bytes.fromhex("410fae5108"), 0x2000 + 8, 5),  # ldmxcsr [r9+8]
        (bytes.fromhex("0fae1425f0ff0000"), 0xFFF0, 8),  # ldmxcsr [0xfff0]
        (bytes.fromhex("0fae1510000000"), 0x5000 + 7 + 0x10, 7),  # ldmxcsr [rip+0x10]
        (bytes.fromhex("650fae142510000000"), 0x7000 + 0x10, 9),  # ldmxcsr gs:[0x10]
        (bytes.fromhex("0fae5448f8"), 0x1000 + 0x8000 * 2 - 8, 5),  # ldmxcsr [rax+rcx*2-8]
    ],
)
def test_memory_operands_decode_like_the_cpu(insn: bytes, address: int, length: int) -> None:
    regs = pyfastvm.Regs(rax=0x1000, rcx=0x8000, rsp=0x8000, r9=0x2000, rip=0x5000)
    operand = decode_memory_operand(insn, 2, regs, {0x65: 0x7000})
    assert (operand.address, operand.length, operand.reg) == (address, length, 2)
