"""A guest stopped mid-loop, saved whole (vCPU, VM, devices, RAM) and
restored into a new VM, goes on exactly where it was."""

from __future__ import annotations

from typing import Any

import pytest
from guests import LONG_COUNTING_LOOP, LONG_COUNTING_LOOP_COUNTER, SERIAL_PORT, long_mode_vcpu

import pyfastvm
from pyfastvm.devices import restore_device_state, save_device_state

pytestmark = pytest.mark.hwkvm

MEMORY = 16 << 20


class Counter(pyfastvm.Device):
    """Takes the guest's counts, notes any that does not follow the last
    one, and stops the vCPU at `stop_at`."""

    def __init__(self, vcpu: pyfastvm.Vcpu | None = None, stop_at: int = 0) -> None:
        self.vcpu, self.stop_at = vcpu, stop_at
        self.last = 0
        self.gaps: list[tuple[int, int]] = []

    def read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        count = int.from_bytes(data, "little")
        if count != self.last + 1:
            self.gaps.append((self.last, count))
        self.last = count
        if count == self.stop_at and self.vcpu is not None:
            self.vcpu.stop()

    def snapshot(self) -> dict[str, Any]:
        return {"last": self.last}

    def restore(self, state: dict[str, Any]) -> None:
        self.last = state["last"]


def machine(counter: Counter) -> pyfastvm.Vm:
    vm = pyfastvm.Vm(MEMORY)
    vm.create_irqchip()
    vm.create_pit()
    vm.add_pio_device(SERIAL_PORT, 8, counter)
    return vm


def memory_counter(vm: pyfastvm.Vm) -> int:
    address = 0x10000 + LONG_COUNTING_LOOP_COUNTER
    return int.from_bytes(vm.memory.read(address, 8), "little")


def test_a_counting_guest_goes_on_in_a_new_vm_where_it_stopped() -> None:
    counter = Counter()
    vm = machine(counter)
    vcpu = long_mode_vcpu(vm, LONG_COUNTING_LOOP)
    counter.vcpu, counter.stop_at = vcpu, 100
    assert vcpu.run().reason == "stopped"
    assert (counter.last, counter.gaps, memory_counter(vm)) == (100, [], 100)

    vcpu_state, vm_state = vcpu.save_state(), vm.save_state()
    device_state = save_device_state(counter)
    ram = vm.memory.read(0, MEMORY)
    assert device_state == {"last": 100}

    resumed = Counter()
    restore_device_state(resumed, device_state)
    new_vm = machine(resumed)
    new_vm.memory.write(0, ram)
    new_vm.restore_state(vm_state)
    new_vcpu = new_vm.create_vcpu(0)
    new_vcpu.restore_state(vcpu_state)
    resumed.vcpu, resumed.stop_at = new_vcpu, 250
    assert new_vcpu.run().reason == "stopped"

    assert (resumed.last, resumed.gaps) == (250, [])  # 101 came first: no reset, no repeat
    assert (new_vcpu.get_regs().rbx, memory_counter(new_vm)) == (250, 250)
    assert memory_counter(vm) == 100  # the original's RAM is its own
