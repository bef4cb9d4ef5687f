"""The CPUID a vCPU presents: KVM's supported leaves, adjusted per vCPU
(Intel SDM vol. 2A, CPUID) and with the KVM paravirt leaves
(Documentation/virt/kvm/x86/cpuid.rst)."""

from __future__ import annotations

from collections.abc import Iterable

from .._core import CpuidEntry

KVM_SIGNATURE_LEAF = 0x4000_0000
KVM_FEATURES_LEAF = 0x4000_0001
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"

LEAF1_ECX_HYPERVISOR = 1 << 31
LEAF1_EBX_APIC_ID_SHIFT = 24
LEAF1_EBX_LOGICAL_COUNT_SHIFT = 16
EXTENDED_TOPOLOGY_LEAVES = (0xB, 0x1F)
ADVANCED_POWER_LEAF = 0x8000_0007
INVARIANT_TSC = 1 << 8  # EDX of leaf 0x80000007


def kvm_signature_leaf(max_leaf: int) -> CpuidEntry:
    """Leaf 0x40000000: the highest hypervisor leaf and "KVMKVMKVM\\0\\0\\0"."""
    ebx, ecx, edx = (int.from_bytes(KVM_SIGNATURE[i : i + 4], "little") for i in (0, 4, 8))
    return CpuidEntry(function=KVM_SIGNATURE_LEAF, eax=max_leaf, ebx=ebx, ecx=ecx, edx=edx)


def _replace(entry: CpuidEntry, **registers: int) -> CpuidEntry:
    fields = {
        name: getattr(entry, name)
        for name in ("function", "index", "flags", "eax", "ebx", "ecx", "edx")
    }
    return CpuidEntry(**(fields | registers))


def _for_vcpu(entry: CpuidEntry, apic_id: int, vcpu_count: int) -> CpuidEntry:
    if entry.function == 1:
        ebx = entry.ebx & 0x0000_FFFF
        ebx |= apic_id << LEAF1_EBX_APIC_ID_SHIFT | vcpu_count << LEAF1_EBX_LOGICAL_COUNT_SHIFT
        return _replace(entry, ebx=ebx, ecx=entry.ecx | LEAF1_ECX_HYPERVISOR)
    if entry.function in EXTENDED_TOPOLOGY_LEAVES:
        return _replace(entry, edx=apic_id)  # x2APIC id of this logical processor
    if entry.function == ADVANCED_POWER_LEAF:
        # Without an invariant TSC Linux keeps kvm-clock as its clocksource,
        # as with QEMU's default CPU models.
        return _replace(entry, edx=entry.edx & ~INVARIANT_TSC)
    return entry


def vcpu_cpuid(
    supported: Iterable[CpuidEntry], *, apic_id: int, vcpu_count: int
) -> list[CpuidEntry]:
    """KVM_GET_SUPPORTED_CPUID adjusted for one vCPU: its APIC id, the
    hypervisor bit, no invariant TSC, and the KVM leaves (kept from KVM when
    it reports them)."""
    entries = [
        _for_vcpu(e, apic_id, vcpu_count)
        for e in supported
        if e.function not in (KVM_SIGNATURE_LEAF, KVM_FEATURES_LEAF)
    ]
    features = next((e for e in supported if e.function == KVM_FEATURES_LEAF), None)
    entries.append(kvm_signature_leaf(KVM_FEATURES_LEAF))
    entries.append(features if features is not None else CpuidEntry(function=KVM_FEATURES_LEAF))
    return entries
