"""What a system call from guest user mode costs, beside a user-mode page
fault round trip, measured in one run.

On hardware KVM both stay inside the guest. On KVM on PVM a SYSCALL only
reaches the guest kernel through the "syscall" exit assist (a #PF into a
hook, an exit, the VMM finishing the SYSCALL), and every #PF now passes
through the same hook; the plain #PF, in a VM without the assist, is what a
fault cost before it.

- A tiny kernel (pyfastvm.testing.tiny_kernel) runs batches of SYSCALL and
  SYSRETQ, or of faulting loads whose handler skips the load and IRETQs.
- Linux (the minimal kernel): a static program calls getppid N times; the
  cost per call is the difference between two loop lengths, so process
  start-up cancels out, timed by the guest's clock (/proc/uptime, in 10 ms
  steps) and by the host (when markers written to /dev/kmsg reach the
  console).
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pytest
from conftest import Recorder
from guest_programs import getppid_loop
from pytest_benchmark.fixture import BenchmarkFixture

import pyfastvm
from pyfastvm.devices import DebugExit
from pyfastvm.guest.cpio import CpioEntry, write_cpio
from pyfastvm.guest.minimal_kernel import minimal_kernel
from pyfastvm.host import host_profile
from pyfastvm.testing.tiny_kernel import SYSCALL_BOOT, TinyKernel

PROFILE = host_profile()
BATCH = 1000
ROUNDS = 20
COUNT_ADDRESS = 0x8000
DONE_MMIO = 0xD000_0000

# User: start: mov ebx, [COUNT_ADDRESS]; test ebx, ebx; jz done; 1: syscall;
#   dec ebx; jnz 1b; done: mov edx, DONE_MMIO; mov [rdx], al; jmp start
SYSCALL_LOOP = bytes.fromhex("8b1c250080000085db74060f05ffcb75faba000000d08802ebe6")
# User: start: movabs rsi, 0x140000000 (unmapped); mov ebx, [COUNT_ADDRESS];
#   test ebx, ebx; jz done; 1: mov eax, [rsi]; dec ebx; jnz 1b;
#   done: mov edx, DONE_MMIO; mov [rdx], al; jmp start
FAULT_LOOP = bytes.fromhex(
    "48be00000040010000008b1c250080000085db74068b06ffcb75faba000000d08802ebdc"
)
# Kernel: the entry is a bare sysretq; the #PF handler skips the 2-byte load:
#   add qword [rsp + 8], 2; add rsp, 8; iretq
SYSRETQ = bytes.fromhex("480f07")
SKIP_FAULTING_LOAD = bytes.fromhex("4883442408024883c40848cf")
TINY = TinyKernel(
    boot=SYSCALL_BOOT,
    syscall_entry=SYSRETQ,
    page_fault_handler=SKIP_FAULTING_LOAD,
    user_program=SYSCALL_LOOP,
)
CASES = {
    "syscall_round_trip": (SYSCALL_LOOP, True),
    "page_fault_round_trip": (FAULT_LOOP, True),
    "page_fault_round_trip_unhooked": (FAULT_LOOP, False),
}


def tiny_guest(user_program: bytes, assists: bool) -> pyfastvm.Vcpu:
    vm = pyfastvm.Vm(16 << 20)
    if assists:
        vm.enable_exit_assists(list(PROFILE.exit_assists))
    vm.add_mmio_device(DONE_MMIO, 1, DebugExit())
    vm.memory.write(COUNT_ADDRESS, BATCH.to_bytes(4, "little"))
    return dataclasses.replace(TINY, user_program=user_program).load(vm)


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_kernel_transition(
    benchmark: BenchmarkFixture, record_per_exit: Recorder, case: str
) -> None:
    code, assists = CASES[case]
    if case.endswith("unhooked") and not PROFILE.is_pvm:
        pytest.skip("hardware KVM has no hook: the other fault case is already unhooked")
    vcpu = tiny_guest(code, assists)
    assert vcpu.run().reason == "debug_exit"  # boots, then the first batch
    benchmark.pedantic(vcpu.run, rounds=ROUNDS, warmup_rounds=1)
    if benchmark.stats:
        record_per_exit("cpl3", case, benchmark.stats.stats.median, BATCH)


# Loop lengths whose difference is timed: a call costs tens of microseconds
# on KVM on PVM, a fraction of one on hardware KVM.
LOOPS = (2_000, 20_000) if PROFILE.is_pvm else (200_000, 2_000_000)
START, END = "pyfastvm-loop-start", "pyfastvm-loop-end"
UPTIME = "echo uptime $(cut -d' ' -f1 /proc/uptime)"
SCRIPT = f"""
{UPTIME}; /loop-short; {UPTIME}; echo {START} > /dev/kmsg
/loop-long; echo {END} > /dev/kmsg; {UPTIME}
"""


@pytest.fixture(scope="module")
def loop_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("getppid") / "loops.cpio"
    short, long = (getppid_loop(count) for count in LOOPS)
    entries = [CpioEntry.file("loop-short", short, 0o755), CpioEntry.file("loop-long", long, 0o755)]
    path.write_bytes(write_cpio(entries))
    return path


def test_linux_getppid(
    benchmark: BenchmarkFixture, record_per_exit: Recorder, loop_initrd: Path
) -> None:
    arrivals: dict[str, float] = {}
    seen = bytearray()

    def watch(data: bytes) -> None:
        seen.extend(data)  # a marker may come in pieces
        for marker in (START, END):
            if marker not in arrivals and marker.encode() in seen[-4096:]:
                arrivals[marker] = time.monotonic()

    def run() -> pyfastvm.RunResult:
        return pyfastvm.run(
            ["sh", "-c", SCRIPT], kernel=minimal_kernel(), initrd=loop_initrd,
            console=watch, timeout=900,
        )  # fmt: skip

    result = benchmark.pedantic(run, rounds=1)
    assert result.exit_code == 0, result.stdout
    t0, t1, t2 = map(float, re.findall(rb"^uptime ([\d.]+)$", result.stdout, re.MULTILINE))
    calls = LOOPS[1] - LOOPS[0]
    guest_seconds = (t2 - t1) - (t1 - t0)
    host_seconds = arrivals[END] - arrivals[START] - (t1 - t0)
    record_per_exit("linux", "getppid_guest_clock", guest_seconds, calls)
    record_per_exit("linux", "getppid_host_clock", host_seconds, calls)
    benchmark.extra_info.update(
        guest_ns_per_call=guest_seconds * 1e9 / calls,
        host_ns_per_call=host_seconds * 1e9 / calls,
        exit_assists=result.exit_assists,
    )
