"""Opening /dev/kvm: the handle's facts and the errors for hosts without KVM."""

import os
import subprocess
import sys

import pytest

import pyfastvm

pytestmark = pytest.mark.hwkvm

KVM_CAP_USER_MEMORY = 3
KVM_CAP_NR_VCPUS = 9


def test_kvm_reports_api_version_and_capabilities() -> None:
    kvm = pyfastvm.Kvm()
    assert kvm.api_version == 12
    assert kvm.check_extension(KVM_CAP_USER_MEMORY) == 1
    assert kvm.check_extension(KVM_CAP_NR_VCPUS) >= 1
    assert kvm.check_extension(0xFFFF_FFF0) == 0
    assert kvm.vcpu_mmap_size >= 4096


def test_supported_cpuid_has_the_basic_leaves() -> None:
    leaves = {entry.function: entry for entry in pyfastvm.Kvm().supported_cpuid()}
    assert 0 in leaves and 1 in leaves and 0x80000000 in leaves
    vendor = b"".join(getattr(leaves[0], r).to_bytes(4, "little") for r in ("ebx", "edx", "ecx"))
    assert vendor in (b"GenuineIntel", b"AuthenticAMD", b"HygonGenuine")


def test_missing_device_says_how_to_get_kvm(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(pyfastvm.KvmUnavailableError, match="does not exist.*modprobe.*CONFIG_KVM"):
        pyfastvm.Kvm(path=f"{tmp_path}/kvm")


def test_a_file_that_is_not_kvm_is_refused(tmp_path: os.PathLike[str]) -> None:
    path = f"{tmp_path}/not-kvm"
    open(path, "w").close()
    with pytest.raises(pyfastvm.KvmUnavailableError):
        pyfastvm.Kvm(path=path)


def test_vm_without_kvm_raises_the_same_error_type(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(pyfastvm.VmmError):
        pyfastvm.Vm(1 << 20, kvm=pyfastvm.Kvm(path=f"{tmp_path}/kvm"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_permission_denied_says_how_to_get_access() -> None:
    """Opens /dev/kvm as 'nobody', who has no access on this host."""
    program = (
        "import os, pyfastvm\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        "    pyfastvm.Kvm()\n"
        "except pyfastvm.KvmUnavailableError as e:\n"
        "    print(e)\n"
    )
    kvm_mode = os.stat("/dev/kvm").st_mode
    if kvm_mode & 0o006:
        pytest.skip("/dev/kvm is world-accessible here")
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert "permission denied" in out.stdout and "kvm' group" in out.stdout, out.stderr
