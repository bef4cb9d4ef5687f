"""x86 vCPU state a guest kernel expects at boot: CPUID, MSRs, local APIC."""
