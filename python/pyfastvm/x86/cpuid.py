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
LEAF1_EDX_HTT = 1 << 28
LEAF1_EBX_APIC_ID_SHIFT = 24
LEAF1_EBX_LOGICAL_COUNT_SHIFT = 16
CACHE_LEAF = 0x4
CACHE_EAX_CORES_SHIFT = 26
EXTENDED_TOPOLOGY_LEAF = 0xB
V2_TOPOLOGY_LEAF = 0x1F
SMT_LEVEL, CORE_LEVEL = 1, 2
LEVEL_TYPE_SHIFT = 8
SIGNIFICANT_INDEX = 1  # KVM_CPUID_FLAG_SIGNIFCANT_INDEX
# KVM paravirt features whose guest side makes hypercalls (KVM_HC_KICK_CPU,
# KVM_HC_SEND_IPI, KVM_HC_SCHED_YIELD). On KVM on PVM a VMCALL at guest CPL 0
# never completes: KVM re-enters the guest at the VMCALL without end.
KVM_FEATURE_PV_UNHALT = 1 << 7
KVM_FEATURE_PV_SEND_IPI = 1 << 11
KVM_FEATURE_PV_SCHED_YIELD = 1 << 13
HYPERCALL_FEATURES = KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD
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


def extended_topology(apic_id: int, vcpu_count: int) -> list[CpuidEntry]:
    """Leaf 0xB: every vCPU a core of one package, one thread per core. EAX
    gives how far to shift the x2APIC id to reach the next level's id."""
    core_bits = (vcpu_count - 1).bit_length()
    levels = ((0, 1, SMT_LEVEL), (core_bits, vcpu_count, CORE_LEVEL))
    return [
        CpuidEntry(
            function=EXTENDED_TOPOLOGY_LEAF, index=index, flags=SIGNIFICANT_INDEX,
            eax=shift, ebx=count, ecx=level << LEVEL_TYPE_SHIFT | index, edx=apic_id,
        )
        for index, (shift, count, level) in enumerate(levels)
    ]  # fmt: skip


def _for_vcpu(entry: CpuidEntry, apic_id: int, vcpu_count: int) -> CpuidEntry:
    if entry.function == 1:
        ebx = entry.ebx & 0x0000_FFFF
        ebx |= apic_id << LEAF1_EBX_APIC_ID_SHIFT | vcpu_count << LEAF1_EBX_LOGICAL_COUNT_SHIFT
        edx = entry.edx | LEAF1_EDX_HTT if vcpu_count > 1 else entry.edx & ~LEAF1_EDX_HTT
        return _replace(entry, ebx=ebx, ecx=entry.ecx | LEAF1_ECX_HYPERVISOR, edx=edx)
    if entry.function == CACHE_LEAF:
        eax = entry.eax & ~(0x3F << CACHE_EAX_CORES_SHIFT)
        return _replace(entry, eax=eax | (vcpu_count - 1) << CACHE_EAX_CORES_SHIFT)
    if entry.function == V2_TOPOLOGY_LEAF:
        return _replace(entry, edx=apic_id)  # x2APIC id of this logical processor
    if entry.function == ADVANCED_POWER_LEAF:
        # Without an invariant TSC Linux keeps kvm-clock as its clocksource,
        # as with QEMU's default CPU models.
        return _replace(entry, edx=entry.edx & ~INVARIANT_TSC)
    return entry


def vcpu_cpuid(
    supported: Iterable[CpuidEntry], *, apic_id: int, vcpu_count: int, hidden_kvm_features: int = 0
) -> list[CpuidEntry]:
    """KVM_GET_SUPPORTED_CPUID adjusted for one vCPU: its APIC id and the
    topology of `vcpu_count` single-threaded cores, the hypervisor bit, no
    invariant TSC, and the KVM leaves (kept from KVM when it reports them,
    less `hidden_kvm_features`: HostProfile.hidden_kvm_features)."""
    replaced = (KVM_SIGNATURE_LEAF, KVM_FEATURES_LEAF, EXTENDED_TOPOLOGY_LEAF)
    entries = [_for_vcpu(e, apic_id, vcpu_count) for e in supported if e.function not in replaced]
    entries += extended_topology(apic_id, vcpu_count)
    features = next((e for e in supported if e.function == KVM_FEATURES_LEAF), None)
    if features is None:
        features = CpuidEntry(function=KVM_FEATURES_LEAF)
    features = _replace(features, eax=features.eax & ~hidden_kvm_features)
    entries.append(kvm_signature_leaf(KVM_FEATURES_LEAF))
    entries.append(features)
    return entries


VENDOR_LEAF = 0
# The CPUID feature registers a guest's features must be a subset of on the
# host it is restored on, masked of the bits pyfastvm sets itself (the
# hypervisor bit, HTT) and those KVM keeps up to date from the guest's state
# (OSXSAVE, the APIC-enabled bit, OSPKE).
FEATURE_REGISTERS: dict[tuple[int, int], dict[str, int]] = {
    (1, 0): {"ecx": ~(LEAF1_ECX_HYPERVISOR | 1 << 27), "edx": ~(LEAF1_EDX_HTT | 1 << 9)},
    (7, 0): {"ebx": -1, "ecx": ~(1 << 4), "edx": -1},
    (0x8000_0001, 0): {"ecx": -1, "edx": -1},
    (0xD, 1): {"eax": -1},
}


def cpu_vendor(entries: Iterable[CpuidEntry]) -> str:
    """The vendor string of leaf 0: "GenuineIntel", "AuthenticAMD", ..."""
    leaf = next((e for e in entries if e.function == VENDOR_LEAF), None)
    if leaf is None:
        return "unknown"
    return b"".join(r.to_bytes(4, "little") for r in (leaf.ebx, leaf.edx, leaf.ecx)).decode(
        "ascii", "replace"
    )


def missing_features(guest: Iterable[CpuidEntry], supported: Iterable[CpuidEntry]) -> list[str]:
    """The feature bits `guest` has that `supported` (KVM_GET_SUPPORTED_CPUID)
    lacks, as "leaf 0x7.0 ebx 0x..." strings; empty when it can run there."""
    offered = {(e.function, e.index): e for e in supported}
    missing = []
    for entry in guest:
        masks = FEATURE_REGISTERS.get((entry.function, entry.index), {})
        host = offered.get((entry.function, entry.index), CpuidEntry())
        for register, mask in masks.items():
            extra = getattr(entry, register) & mask & ~getattr(host, register) & 0xFFFF_FFFF
            if extra:
                missing.append(f"leaf {entry.function:#x}.{entry.index} {register} {extra:#x}")
    return missing
