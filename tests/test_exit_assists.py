"""The exit assists of KVM-on-PVM hosts (rust/src/assist): instructions KVM's
emulator lacks at CPL 0, completed in the run loop as the CPU would. The
SYSCALL assist has its own module, test_syscall_assist.py.

Each guest runs with this host's assists; on hardware KVM there are none
and the CPU runs the same instructions itself, so the guest's view must be
the same on both."""

from __future__ import annotations

import pytest
from guests import DEBUG_EXIT_PORT, long_mode_vcpu
from test_event_delivery import HANDLED, guest_with_idt

import pyfastvm
from pyfastvm.devices import DebugExit
from pyfastvm.host import PVM_EXIT_ASSISTS, host_profile

pytestmark = pytest.mark.hwkvm

PROFILE = host_profile()
MXCSR_AT = 0x2000
ROUND_DOWN_MXCSR = 0x3F80  # all exceptions masked, rounding toward -inf
# fwait; ldmxcsr [MXCSR_AT]; mov al, 7; out 0xf4, al
FWAIT_LDMXCSR = bytes.fromhex("9b0fae142500200000b007e6f4")
# int3; jmp $   (the #BP handler reports HANDLED)
INT3 = bytes.fromhex("ccebfe")


def test_int3_reaches_the_guests_breakpoint_handler() -> None:
    vm, vcpu = guest_with_idt(INT3)
    vm.enable_exit_assists(list(PROFILE.exit_assists))
    assert vcpu.run().status == HANDLED
    if PROFILE.is_pvm:
        assert vm.exit_assist_counts()["int3"] == 1


def test_fwait_and_ldmxcsr_complete() -> None:
    vm = pyfastvm.Vm(16 << 20)
    vm.enable_exit_assists(list(PROFILE.exit_assists))
    vm.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit())
    vm.memory.write(MXCSR_AT, ROUND_DOWN_MXCSR.to_bytes(4, "little"))
    vcpu = long_mode_vcpu(vm, FWAIT_LDMXCSR)
    # (The RIP at the OUT's exit is not compared: on SVM without next-RIP
    # support KVM moves past the OUT only when the vCPU runs again.)
    assert (vcpu.run().status, vcpu.get_fpu().mxcsr) == (7, ROUND_DOWN_MXCSR)
    if PROFILE.is_pvm:
        counts = vm.exit_assist_counts()
        assert (counts["fwait"], counts["ldmxcsr"]) == (1, 1)


def test_the_assists_are_chosen_once_by_name() -> None:
    vm = pyfastvm.Vm(16 << 20)
    with pytest.raises(pyfastvm.InvalidArgumentError, match='unknown exit assist "sysenter"'):
        vm.enable_exit_assists(["sysenter"])
    vm.enable_exit_assists(list(reversed(PVM_EXIT_ASSISTS)))
    assert vm.exit_assists == list(PVM_EXIT_ASSISTS)  # pyfastvm's order, SYSCALL first
    with pytest.raises(ValueError, match="already chosen"):
        vm.enable_exit_assists(["int3"])
