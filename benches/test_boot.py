"""Boot benchmarks: the VMM's own set-up cost, `run(["true"])` end to end
with where its time goes, and QEMU's microvm booting the same kernel and
initramfs to its init in the same run.

On a KVM-on-PVM host a boot takes seconds to minutes of emulated guest time
and QEMU cannot get past the kernel's int3 self-test there; on hardware KVM
both take a fraction of a second. Each boot is one round: they are long and
their spread is small beside them.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import BootRecorder
from pytest_benchmark.fixture import BenchmarkFixture

import pyfastvm
from pyfastvm.guest.console_protocol import INIT_MILESTONE, new_nonce
from pyfastvm.guest.debian import busybox_static, debian_kernel
from pyfastvm.guest.initramfs import build_initramfs
from pyfastvm.guest.minimal_kernel import minimal_kernel

BOOT_TIMEOUT = 1500.0
# QEMU hangs on some kernels on PVM hosts; how long it gets before that is recorded.
QEMU_TIMEOUT = 300.0
QEMU = shutil.which("qemu-system-x86_64")
KERNELS = {"minimal": minimal_kernel, "stock": debian_kernel}
# (kernel, vCPUs): the stock kernel once, the minimal one at 1, 2 and 4 vCPUs.
BOOTS = [("stock", 1), ("minimal", 1), ("minimal", 2), ("minimal", 4)]
BOOT_IDS = [f"{kernel}-{vcpus}vcpu" for kernel, vcpus in BOOTS]


@pytest.fixture(scope="module")
def initramfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("initramfs") / "true.cpio"
    path.write_bytes(build_initramfs(["true"], nonce=new_nonce(), busybox=busybox_static()))
    return path


def test_setup_until_the_first_guest_instruction(benchmark: BenchmarkFixture) -> None:
    """MicroVM.start(): the init chain (VM, devices, host-side kernel
    decompression and loading, vCPU state) until the vCPU threads run."""
    config = pyfastvm.VMConfig(kernel=debian_kernel())
    machines: list[pyfastvm.MicroVM] = []

    def start() -> None:
        machines.append(pyfastvm.MicroVM(config).start())

    def teardown() -> None:
        while machines:
            machines.pop().close()

    benchmark.pedantic(start, setup=teardown, rounds=5)
    teardown()


@pytest.mark.parametrize(("kernel", "vcpus"), BOOTS, ids=BOOT_IDS)
def test_pyfastvm_run_true(
    benchmark: BenchmarkFixture, record_boot: BootRecorder, kernel: str, vcpus: int
) -> None:
    """`run(["true"])` end to end, split at the console's milestones: the
    first byte (VMM set-up and the kernel's earliest boot), the kernel
    starting init, the guest's report (init, the command, the report), and
    the VM's end (power-off and teardown)."""
    path = KERNELS[kernel]()
    phases = Phases()

    def run() -> None:
        phases.start()
        result = pyfastvm.run(
            ["true"], kernel=path, vcpus=vcpus, timeout=BOOT_TIMEOUT, console=phases.feed
        )
        phases.mark("ended")
        assert result.exit_code == 0
        benchmark.extra_info["exit_assists"] = result.exit_assists

    benchmark.pedantic(run, rounds=1)
    benchmark.extra_info["seconds_to"] = phases.seconds
    record_boot("pyfastvm", f"{kernel}-{vcpus}vcpu", phases.seconds["init"])


class Phases:
    """Seconds from the start of a run to each console milestone."""

    MILESTONES = (("first_output", b""), ("init", INIT_MILESTONE.encode()), ("report", b" EXIT "))

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = 0.0
        self._recent = b""  # a milestone may come in pieces

    def start(self) -> None:
        self._started = time.monotonic()

    def mark(self, name: str) -> None:
        self.seconds.setdefault(name, round(time.monotonic() - self._started, 3))

    def feed(self, data: bytes) -> None:
        self._recent = self._recent[-256:] + data
        for name, text in self.MILESTONES:
            if text in self._recent:
                self.mark(name)


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 is not installed")
@pytest.mark.parametrize(("kernel", "vcpus"), BOOTS, ids=BOOT_IDS)
def test_qemu_microvm_boot(
    benchmark: BenchmarkFixture, record_boot: BootRecorder, initramfs: Path, kernel: str, vcpus: int
) -> None:
    """The same kernel, initramfs and command line under QEMU's microvm
    (with ACPI, through which the guest finds its CPUs, as with pyfastvm)."""
    assert QEMU is not None
    command = [
        QEMU, "-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "max", "-m", "256M",
        "-smp", str(vcpus),
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
        "-kernel", str(KERNELS[kernel]()), "-initrd", str(initramfs),
        "-append", pyfastvm_cmdline(KERNELS[kernel]()),
    ]  # fmt: skip
    outcome: dict[str, object] = {}

    def boot() -> None:
        outcome.update(_time_to_init(command))
        seconds = outcome["seconds"]
        if outcome["reached_init"] and isinstance(seconds, float):
            record_boot("qemu", f"{kernel}-{vcpus}vcpu", seconds)

    benchmark.pedantic(boot, rounds=1)
    benchmark.extra_info.update(outcome)


def pyfastvm_cmdline(kernel: Path) -> str:
    """The command line pyfastvm boots `kernel` with: its own arguments, its
    devices' and this host's."""
    machine = pyfastvm.MicroVM(pyfastvm.VMConfig(kernel=kernel))
    machine.chain.run(machine.context)  # built, not started
    try:
        return machine.context.cmdline
    finally:
        machine.close()


# QEMU's words when KVM stops the guest at an instruction it cannot emulate
# (QEMU then keeps the dead guest paused instead of exiting).
QEMU_EMULATION_FAILURE = b"KVM internal error"


def _time_to_init(command: list[str]) -> dict[str, object]:
    """Runs QEMU until the kernel starts init, QEMU exits or reports an
    emulation failure, or QEMU_TIMEOUT."""
    start = time.monotonic()
    log = b""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as qemu:
        assert qemu.stdout is not None
        watchdog = threading.Timer(QEMU_TIMEOUT, qemu.kill)
        watchdog.start()
        try:
            for line in qemu.stdout:
                log += line
                if INIT_MILESTONE.encode() in line or QEMU_EMULATION_FAILURE in line:
                    break
        finally:
            watchdog.cancel()
            qemu.kill()
    tail = log.decode(errors="replace").splitlines()[-3:]
    return {
        "reached_init": INIT_MILESTONE.encode() in log,
        "emulation_failure": QEMU_EMULATION_FAILURE in log,
        "seconds": round(time.monotonic() - start, 2),
        "last_lines": tail,
    }
