"""What real user programs need from the guest kernel, on this host's default
kernel: fork and exec, pipes, signals, the time from the vDSO, and FPU/SSE
state that survives context switches while several vCPUs run processes at
once. On KVM-on-PVM hosts every system call and user page fault goes
through the exit assists (rust/src/assist), so this is their acceptance
test with busybox and glibc (Debian's busybox-static is linked with it)."""

from __future__ import annotations

import re
import time
from typing import NamedTuple

import pytest
from boot_timeouts import MINIMAL_BOOT_TIMEOUT

import pyfastvm
from pyfastvm.guest.console_protocol import ConsoleProtocol, new_nonce
from pyfastvm.guest.initramfs import build_initramfs
from pyfastvm.host import host_profile
from pyfastvm.runner import default_kernel

pytestmark = pytest.mark.hwkvm

VCPUS = 2
FPU_LOOPS = 1_000_000
FPU_PROCESSES = (1, 2, 3)
SCRIPT = f"""
echo "pipe $(seq 1 2000 | sort -rn | head -n 1)"
trap 'echo "signal caught"' USR1; kill -USR1 $$
sh -c 'kill -TERM $$'; echo "child status $?"
echo "vdso $(grep -c vdso /proc/self/maps)"
echo "time $(date +%s)"
for k in {" ".join(map(str, FPU_PROCESSES))}; do
  awk -v k=$k 'BEGIN {{ for (i = 1; i <= {FPU_LOOPS}; i++) s += i * k / 7;
                       printf "sum %d %.6f\\n", k, s }}' &
done
wait
grep '^cpu[0-9]' /proc/stat
"""


class GuestRun(NamedTuple):
    result: pyfastvm.RunResult
    # The host's wall-clock time before and after the run.
    started: float
    ended: float


@pytest.fixture(scope="module")
def run() -> GuestRun:
    started = time.time()
    result = pyfastvm.run(["sh", "-c", SCRIPT], vcpus=VCPUS, timeout=MINIMAL_BOOT_TIMEOUT)
    return GuestRun(result, started, time.time())


def output(run: GuestRun) -> list[str]:
    assert run.result.exit_code == 0, run.result.stdout
    return run.result.stdout.decode().splitlines()


def labelled(run: GuestRun, label: str) -> str:
    """The rest of the output line that starts with `label`."""
    lines = [line for line in output(run) if line.startswith(f"{label} ")]
    assert len(lines) == 1, output(run)
    return lines[0].removeprefix(f"{label} ")


def test_fork_exec_and_pipes(run: GuestRun) -> None:
    assert labelled(run, "pipe") == "2000"


def test_signals_reach_their_handlers_and_kill(run: GuestRun) -> None:
    assert labelled(run, "signal") == "caught"
    assert labelled(run, "child status") == "143"  # 128 + SIGTERM


def test_the_vdso_is_mapped_and_tells_the_time(run: GuestRun) -> None:
    assert int(labelled(run, "vdso")) >= 1
    # kvm-clock's wall clock, read in user mode, falls within the run
    # (give or take a few seconds: the guest sets it once at boot)
    assert run.started - 5 <= int(labelled(run, "time")) <= run.ended + 5


def test_sse_state_survives_context_switches(run: GuestRun) -> None:
    """Three processes do double arithmetic at once on two vCPUs; each sum
    must be the host's bit for bit."""
    sums = dict(re.findall(r"^sum (\d) (\S+)$", "\n".join(output(run)), re.MULTILINE))
    for k in FPU_PROCESSES:
        expected = 0.0
        for i in range(1, FPU_LOOPS + 1):
            expected += i * k / 7
        assert sums[str(k)] == f"{expected:.6f}"


def test_every_vcpu_ran_user_processes(run: GuestRun) -> None:
    cpus = [line.split() for line in output(run) if line.startswith("cpu")]
    assert len(cpus) == VCPUS
    assert all(int(fields[1]) > 0 for fields in cpus), cpus  # user time, in ticks


def test_only_pvm_hosts_complete_system_calls_in_the_vmm(
    run: GuestRun,
) -> None:
    """Every system call and user page fault of the run went through the
    hook on PVM; on hardware KVM nothing was installed to count them."""
    counts = run.result.exit_assists
    if host_profile().is_pvm:
        assert counts["syscall"] > 100 and counts["page_fault"] > 100
    else:
        assert counts == {}


NMI_TO_APIC_0 = (0xFEE0_0000, 0x400)  # MSI address and data: delivery mode NMI (SDM 3A 11.11)


def test_an_nmi_while_the_command_runs_is_survived() -> None:
    """Linux enters its NMI handler through `paranoid_entry`, which with
    FSGSBASE finds its per-CPU area with LSL, an instruction KVM's emulator
    lacks on PVM hosts (the host profile hides FSGSBASE there). Other CPUs'
    panics and RCU stall reports send NMIs; here the host sends one."""
    nonce = new_nonce()
    protocol = ConsoleProtocol(nonce)
    overlay = build_initramfs(["sh", "-c", "sleep 2; echo survived"], nonce=nonce)
    config = pyfastvm.VMConfig(kernel=default_kernel())
    with pyfastvm.MicroVM(config, console=protocol.feed, initrd_overlay=overlay) as machine:
        assert machine.wait_until(lambda: protocol.command_started, MINIMAL_BOOT_TIMEOUT)
        assert machine.context.vm.signal_msi(*NMI_TO_APIC_0)
        assert machine.wait_until(lambda: protocol.finished, MINIMAL_BOOT_TIMEOUT)
    assert (protocol.exit_code, protocol.stdout) == (0, b"survived\n")
    assert "NMI received for unknown reason" in machine.console
