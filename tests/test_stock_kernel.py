"""pyfastvm.run on Debian's stock cloud kernel: the one boot of the suite
that takes minutes on KVM-on-PVM hosts (marked slow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kernel_log import ACPI_COMPLAINTS, VIRTIO_ERRORS, cpus_brought_up, virtio_disks

import pyfastvm
from pyfastvm.guest.debian import debian_kernel, debian_kernel_release
from pyfastvm.host import is_pvm_host
from pyfastvm.x86.cpuid import cpu_vendor

# The stock kernel needs minutes of guest time to reach its init under KVM's
# instruction emulator on a PVM host; a fraction of a second on hardware KVM.
STOCK_BOOT_TIMEOUT = 1500.0

# On AMD KVM-on-PVM hosts its init comes after 15 to 25 minutes, beside the
# rest of the suite: half of CI's budget. The lane boots it on every commit.
RUN_ON_AMD_PVM = "PYFASTVM_STOCK_ON_AMD_PVM"
AMD_PVM_SKIP = pytest.mark.skipif(
    is_pvm_host()
    and cpu_vendor(pyfastvm.Kvm().supported_cpuid()) == "AuthenticAMD"
    and not os.environ.get(RUN_ON_AMD_PVM),
    reason=f"Debian's kernel needs 15 to 25 minutes to boot on an AMD KVM-on-PVM host; "
    f"the hardware-KVM lane boots it, and {RUN_ON_AMD_PVM}=1 runs it here",
)


@pytest.mark.slow
@pytest.mark.hwkvm
@AMD_PVM_SKIP
def test_stock_kernel_runs_a_command_as_a_kvm_guest(tmp_path: Path) -> None:
    """Boots Debian's cloud kernel with 2 vCPUs, which it finds only through
    ACPI, and runs `uname -r` in it. The same boot has a virtio disk, vsock
    and entropy device, which it finds through the DSDT once the initramfs
    has loaded virtio_mmio and their drivers (test_virtio_linux uses them on
    this host's default kernel)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    # /dev/hwrng serves bytes only from a registered RNG, and this kernel has
    # no other than virtio-rng. (Its sysfs rng_current once failed to open
    # here, ENOENT, on a PVM host; the same boot passed again with it.)
    command = "uname -r; head -c 16 /dev/hwrng | wc -c; ls /dev/vsock"
    result = pyfastvm.run(
        ["sh", "-c", command],
        kernel=debian_kernel(),
        vcpus=2,
        timeout=STOCK_BOOT_TIMEOUT,
        disks=[pyfastvm.Disk(disk, read_only=True)],
        vsock=pyfastvm.Vsock(tmp_path / "v.sock"),
        rng=True,
    )
    expected = f"{debian_kernel_release()}\n16\n/dev/vsock\n"
    assert (result.exit_code, result.stdout) == (0, expected.encode())
    log = result.console
    assert virtio_disks(log) == {"vda": 2048}
    assert not VIRTIO_ERRORS.findall(log), log
    assert "Hypervisor detected: KVM" in log
    assert "clocksource: Switched to clocksource kvm-clock" in log
    assert cpus_brought_up(log) == 2
    assert not ACPI_COMPLAINTS.findall(log), log
    assert "Run /init as init process" in log
