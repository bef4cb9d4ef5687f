"""Facts about the host's KVM that change what a guest can do."""

from pathlib import Path

PVM_MODULE = Path("/sys/module/kvm_pvm")


def is_pvm_host() -> bool:
    """True when /dev/kvm is KVM on PVM (software virtualization, no VMX/SVM):
    guest kernel code runs through KVM's instruction emulator, and guest user
    space cannot make system calls."""
    return PVM_MODULE.exists()
