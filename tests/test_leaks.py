"""Creating and dropping VMs releases every file descriptor, mapping and thread."""

import contextlib
import gc

from guests import DEBUG_EXIT_PORT, LONG_THOUSAND_OUTS, SERIAL_PORT, Recorder, long_mode_vcpu
from process_resources import mappings, open_fds, os_threads, os_threads_after_exits

import pyfastvm
from pyfastvm.devices import DebugExit


def boot_and_drop(kvm: pyfastvm.Kvm) -> None:
    vm = pyfastvm.Vm(4 << 20, kvm=kvm)
    vm.add_pio_device(SERIAL_PORT, 1, Recorder())
    vm.add_pio_device(DEBUG_EXIT_PORT, 1, DebugExit())
    for index in range(2):
        vcpu = long_mode_vcpu(vm, LONG_THOUSAND_OUTS, index)
        assert vcpu.run().reason == "debug_exit"
    with contextlib.suppress(pyfastvm.GuestMemoryError):
        vm.memory.read(8 << 20, 1)


def test_a_hundred_vms_leak_no_fds_mappings_or_threads() -> None:
    kvm = pyfastvm.Kvm()
    boot_and_drop(kvm)  # warm up lazily created state
    gc.collect()
    fds, maps, threads = open_fds(), mappings(), os_threads()
    for _ in range(100):
        boot_and_drop(kvm)
    gc.collect()
    assert open_fds() == fds
    assert mappings() == maps
    assert os_threads_after_exits(threads) == threads


def test_vms_with_their_own_kvm_handle_leak_nothing() -> None:
    pyfastvm.Vm(1 << 20).create_vcpu(0)
    gc.collect()
    fds = open_fds()
    for _ in range(100):
        pyfastvm.Vm(1 << 20).create_vcpu(0)
    gc.collect()
    assert open_fds() == fds
