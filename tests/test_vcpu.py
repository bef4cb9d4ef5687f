"""The vCPU: register state, exits that reach Python, stopping, Ctrl-C, SMP."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from guests import (
    DEBUG_EXIT_PORT,
    LONG_SPIN,
    LONG_THOUSAND_OUTS,
    LONG_UD2,
    SERIAL_PORT,
    Recorder,
    long_mode_vcpu,
    real_mode_vcpu,
)

import pyfastvm
from pyfastvm.devices import DebugExit, Sink
from pyfastvm.host import is_pvm_host

# 1: inc rbx; jmp 1b
COUNT_IN_RBX = bytes.fromhex("48ffc3ebfb")

pytestmark = pytest.mark.hwkvm

MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_NOT_THERE = 0xDEAD_BEEF
MXCSR_ROUND_DOWN = 0x3F80  # the reset value 0x1F80 with rounding toward -infinity


def test_hlt_ends_the_run(vm: pyfastvm.Vm) -> None:
    vcpu = real_mode_vcpu(vm, b"\xf4")  # hlt
    exit = vcpu.run()
    assert exit.reason == "halted" and exit.status is None
    assert vcpu.get_regs().rip == 0x1001


def test_triple_fault_ends_the_run_with_shutdown(vm: pyfastvm.Vm) -> None:
    vcpu = long_mode_vcpu(vm, LONG_UD2)
    sregs = vcpu.get_sregs()
    sregs.idt.base, sregs.idt.limit = 0, 0
    vcpu.set_sregs(sregs)
    assert vcpu.run().reason == "shutdown"


def test_registers_round_trip(vm: pyfastvm.Vm) -> None:
    vcpu = vm.create_vcpu(0)
    vcpu.set_regs(pyfastvm.Regs(rax=1, rbx=2, r15=0xFFFF_FFFF_FFFF_FFFF, rip=0x1234, rflags=2))
    regs = vcpu.get_regs()
    assert (regs.rax, regs.rbx, regs.r15, regs.rip) == (1, 2, 2**64 - 1, 0x1234)

    sregs = vcpu.get_sregs()
    sregs.cs.base, sregs.cs.selector, sregs.gdt.base, sregs.gdt.limit = 0x10000, 0x1000, 0x500, 0x27
    # Set, not left at reset: KVM resets CS to type 11 (accessed) on VMX and
    # PVM but to 10 on SVM, as AMD's reset state has it.
    sregs.cs.type = 11
    vcpu.set_sregs(sregs)
    again = vcpu.get_sregs()
    assert (again.cs.base, again.cs.selector, again.gdt.base, again.gdt.limit) == (
        0x10000,
        0x1000,
        0x500,
        0x27,
    )
    assert again.cs.type == 11 and again.cs.db == 0 and len(again.interrupt_bitmap) == 4


def test_fpu_round_trips(vm: pyfastvm.Vm) -> None:
    vcpu = vm.create_vcpu(0)
    fpu = vcpu.get_fpu()
    assert len(fpu.fpr) == 8 and len(fpu.xmm) == 16 and len(fpu.xmm[0]) == 16
    fpu.fcw, fpu.mxcsr = 0x37F, MXCSR_ROUND_DOWN
    fpu.xmm = [bytes([i] * 16) for i in range(16)]
    vcpu.set_fpu(fpu)
    again = vcpu.get_fpu()
    assert (again.fcw, again.mxcsr, again.xmm[3]) == (0x37F, MXCSR_ROUND_DOWN, bytes([3] * 16))
    fpu.xmm = fpu.xmm[:2]
    with pytest.raises(ValueError, match="16 registers"):
        vcpu.set_fpu(fpu)


@pytest.mark.skipif(is_pvm_host(), reason="KVM's instruction emulator on PVM hosts lacks STMXCSR")
def test_the_guest_runs_with_the_mxcsr_set_through_set_fpu(vm: pyfastvm.Vm) -> None:
    # stmxcsr [0x2000]; mov eax, [0x2000]; out 0xf4, eax
    vcpu = long_mode_vcpu(vm, bytes.fromhex("0fae1c25002000008b042500200000e7f4"))
    vm.add_pio_device(DEBUG_EXIT_PORT, 4, DebugExit())
    fpu = vcpu.get_fpu()
    fpu.mxcsr = MXCSR_ROUND_DOWN
    vcpu.set_fpu(fpu)
    assert vcpu.run().status == MXCSR_ROUND_DOWN


def test_msrs_round_trip_and_refusals_name_the_msr(vm: pyfastvm.Vm) -> None:
    vcpu = vm.create_vcpu(0)
    vcpu.set_msrs({MSR_IA32_SYSENTER_CS: 0x10, MSR_IA32_SYSENTER_ESP: 0x8000})
    assert vcpu.get_msrs([MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP]) == {
        MSR_IA32_SYSENTER_CS: 0x10,
        MSR_IA32_SYSENTER_ESP: 0x8000,
    }
    with pytest.raises(pyfastvm.KvmError, match="MSR 0xdeadbeef"):
        vcpu.set_msrs({MSR_NOT_THERE: 1})


def test_cpuid_set_on_the_vcpu_is_what_the_guest_sees(vm: pyfastvm.Vm) -> None:
    # cpuid with eax = 0x40000000; out 0xf4, eax   (reports the signature's eax)
    # mov eax, 0x40000000; cpuid; mov eax, ebx; out 0xf4, eax
    code = bytes.fromhex("b8000000400fa289d8e7f4")
    vcpu = long_mode_vcpu(vm, code)
    vm.add_pio_device(DEBUG_EXIT_PORT, 4, DebugExit())
    entries = pyfastvm.Kvm().supported_cpuid()
    entries.append(pyfastvm.CpuidEntry(function=0x40000000, eax=0x40000001, ebx=0x4B4D564B))
    vcpu.set_cpuid(entries)
    assert vcpu.run().status == 0x4B4D564B  # "KVMK"


def run_in_thread(
    target: Callable[[], pyfastvm.Exit],
) -> tuple[threading.Thread, list[pyfastvm.Exit]]:
    result: list[pyfastvm.Exit] = []
    thread = threading.Thread(target=lambda: result.append(target()))
    thread.start()
    return thread, result


@pytest.mark.parametrize("stopper", ["vcpu", "vm"])
def test_a_spinning_guest_is_stopped_from_another_thread(vm: pyfastvm.Vm, stopper: str) -> None:
    vcpu = long_mode_vcpu(vm, LONG_SPIN)
    thread, result = run_in_thread(vcpu.run)
    thread.join(0.2)
    assert thread.is_alive(), "the guest should still be spinning"
    (vcpu if stopper == "vcpu" else vm).stop()
    thread.join(30)
    assert not thread.is_alive() and result[0].reason == "stopped"
    # The vCPU is reusable after a stop.
    thread, result = run_in_thread(vcpu.run)
    vcpu.stop()
    thread.join(30)
    assert result[0].reason == "stopped"


def test_a_paused_vcpu_runs_on_from_where_it_was(vm: pyfastvm.Vm) -> None:
    """A pause ends run() with "paused"; the next run() continues the guest
    (counting in RBX) as if nothing happened; a stop outranks a pause."""
    vcpu = long_mode_vcpu(vm, COUNT_IN_RBX)
    counts = []
    for _ in range(2):
        thread, result = run_in_thread(vcpu.run)
        thread.join(0.1)
        vm.pause()
        thread.join(30)
        assert result[0].reason == pyfastvm.ExitReason.PAUSED == "paused"
        counts.append(vcpu.get_regs().rbx)
    assert 0 < counts[0] < counts[1]
    vcpu.pause()
    vcpu.stop()
    assert vcpu.run().reason == "stopped"


def test_a_stop_before_run_ends_the_next_run_at_once(vm: pyfastvm.Vm) -> None:
    vcpu = long_mode_vcpu(vm, LONG_SPIN)
    vcpu.stop()
    assert vcpu.run().reason == "stopped"


def test_a_running_vcpu_is_busy_for_other_threads(vm: pyfastvm.Vm) -> None:
    vcpu = long_mode_vcpu(vm, LONG_SPIN)
    thread, _ = run_in_thread(vcpu.run)
    try:
        while thread.is_alive():
            try:
                vcpu.get_regs()
            except pyfastvm.VcpuBusyError as error:
                assert "vCPU 0 is running" in str(error)
                break
    finally:
        vcpu.stop()
        thread.join(30)
    assert not thread.is_alive()


@pytest.mark.parametrize("count", [2, 4])
def test_several_vcpus_run_at_once_on_their_own_threads(count: int) -> None:
    vm = pyfastvm.Vm(16 << 20)
    serial = Recorder()
    vm.add_pio_device(SERIAL_PORT, 1, serial)
    vm.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit())
    vcpus = []
    for index in range(count):
        vcpu = long_mode_vcpu(vm, LONG_THOUSAND_OUTS, index, address=0x10000 + 0x100 * index)
        regs = vcpu.get_regs()
        regs.rax = index  # the byte each vCPU writes
        vcpu.set_regs(regs)
        vcpus.append(vcpu)
    with ThreadPoolExecutor(count) as pool:
        exits = list(pool.map(lambda v: v.run(), vcpus))
    assert [e.reason for e in exits] == ["debug_exit"] * count
    assert [e.status for e in exits] == list(range(count))
    per_vcpu = [serial.text.count(bytes([i])) for i in range(count)]
    assert per_vcpu == [1000] * count


def test_vcpu_ids_are_unique(vm: pyfastvm.Vm) -> None:
    vm.create_vcpu(0)
    with pytest.raises(pyfastvm.InvalidArgumentError, match="vCPU 0 already exists"):
        vm.create_vcpu(0)


# The guest tells a Python device it runs, from inside run(), then spins:
# mov dx, 0x3f8; out dx, al; jmp $   (a signal sent before run() would race it)
CTRL_C_PROGRAM = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import pyfastvm
    from guests import long_mode_vcpu

    class Running(pyfastvm.Device):
        def read(self, offset, size):
            return bytes(size)

        def write(self, offset, data):
            print("running", flush=True)

    vm = pyfastvm.Vm(16 << 20)
    vm.add_pio_device(0x3F8, 1, Running())
    vcpu = long_mode_vcpu(vm, bytes.fromhex("66baf803eeebfe"))
    try:
        vcpu.run()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    """
)
# After the device returns, run() re-enters KVM_RUN; a SIGINT in between
# would wait for the next exit, which this guest never makes.
REENTRY_GRACE = 0.5


def test_ctrl_c_during_run_raises_keyboard_interrupt() -> None:
    program = CTRL_C_PROGRAM.format(tests=os.path.dirname(__file__))
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "running\n"
        time.sleep(REENTRY_GRACE)
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    assert out == "interrupted\n" and child.returncode == 0


def test_a_sink_loop_runs_without_python(vm: pyfastvm.Vm) -> None:
    vm.add_pio_device(SERIAL_PORT, 1, Sink())
    vm.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit())
    exit = long_mode_vcpu(vm, LONG_THOUSAND_OUTS).run()
    assert exit.reason == "debug_exit"
    assert exit.status == 0


@pytest.mark.skipif(not is_pvm_host(), reason="hardware KVM runs stmxcsr natively")
def test_an_instruction_the_emulator_lacks_reports_its_bytes(vm: pyfastvm.Vm) -> None:
    stmxcsr_then_hlt = bytes.fromhex("0fae1c2500200000f4")  # stmxcsr [0x2000]; hlt
    exit = long_mode_vcpu(vm, stmxcsr_then_hlt).run()
    assert (exit.reason, exit.suberror) == ("internal_error", 1)  # KVM_INTERNAL_ERROR_EMULATION
    assert exit.instruction is not None
    assert exit.instruction.startswith(bytes.fromhex("0fae1c25"))
