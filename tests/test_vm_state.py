"""A VM's in-kernel PICs, I/O APIC, PIT and clock: programmed by a guest,
saved, restored into a new VM and compared; refusals."""

import json
import struct

import pytest
from guests import DEBUG_EXIT_PORT, LONG_PROGRAM_PICS_PIT_IOAPIC, long_mode_vcpu

import pyfastvm
from pyfastvm.devices import DebugExit

pytestmark = pytest.mark.hwkvm

# struct kvm_irqchip: chip_id and padding, then the chip's state.
PIC_IMR = 8 + 2  # kvm_pic_state: last_irr, irr, imr, ...
IOAPIC_REDIRECTION = 8 + 24  # kvm_ioapic_state: base, ioregsel, id, irr, pad, redirtbl[24]
# struct kvm_pit_state2: three 24-byte kvm_pit_channel_state, each ending
# with count_load_time, the host time its count was loaded.
PIT_CHANNEL, PIT_LOAD_TIME = 24, 16


def with_devices(pit: bool = True) -> pyfastvm.Vm:
    # Without the in-kernel PIT its ports reach user space: ignore them there.
    vm = pyfastvm.Vm(16 << 20, ignore_unclaimed=not pit)
    vm.create_irqchip()
    if pit:
        vm.create_pit()
    return vm


def programmed(pit: bool) -> pyfastvm.VmState:
    """The state of a VM whose guest masked PIC lines, set PIT channel 0
    counting (where there is a PIT) and wrote an I/O APIC redirection entry."""
    vm = with_devices(pit)
    vm.add_pio_device(DEBUG_EXIT_PORT, 4, DebugExit())
    assert long_mode_vcpu(vm, LONG_PROGRAM_PICS_PIT_IOAPIC).run().reason == "debug_exit"
    return vm.save_state()


def test_the_interrupt_controllers_come_back_in_a_new_vm() -> None:
    # No PIT: its ticks would latch IRQ 0 in the controllers' IRR at any time.
    saved = programmed(pit=False)
    assert saved.pic_master is not None and saved.pic_master[PIC_IMR] == 0xA5
    assert saved.pic_slave is not None and saved.pic_slave[PIC_IMR] == 0x5A
    assert saved.ioapic is not None
    pin5 = struct.unpack_from("<Q", saved.ioapic, IOAPIC_REDIRECTION + 5 * 8)[0]
    assert pin5 == 0x100A5
    vm = with_devices(pit=False)
    vm.restore_state(saved)
    again = vm.save_state()
    assert (again.pic_master, again.pic_slave, again.ioapic) == (
        saved.pic_master,
        saved.pic_slave,
        saved.ioapic,
    )


def pit_without_load_times(pit: bytes | None) -> list[bytes]:
    assert pit is not None
    return [pit[i * PIT_CHANNEL : i * PIT_CHANNEL + PIT_LOAD_TIME] for i in range(3)] + [
        pit[3 * PIT_CHANNEL :]
    ]


def test_the_pit_comes_back_in_a_new_vm() -> None:
    saved = programmed(pit=True)
    assert saved.pit is not None
    assert (struct.unpack_from("<I", saved.pit)[0], saved.pit[13]) == (0x2E9C, 2)  # count, mode
    vm = with_devices()
    vm.restore_state(saved)
    # The PIT reloads its count on restore, at a new host time.
    assert pit_without_load_times(vm.save_state().pit) == pit_without_load_times(saved.pit)


def test_the_clock_goes_on_from_the_saved_value() -> None:
    original = with_devices()
    saved = original.save_state()
    vm = with_devices()
    vm.restore_state(saved)
    restored_clock = vm.save_state().clock
    # Behind the original's, which kept running through the restore.
    assert saved.clock <= restored_clock < original.save_state().clock


def test_a_vm_without_in_kernel_devices_saves_none_of_them(vm: pyfastvm.Vm) -> None:
    state = vm.save_state()
    assert (state.pic_master, state.pic_slave, state.ioapic, state.pit) == (None,) * 4
    with_devices().restore_state(state)  # leaves the new VM's own devices alone


@pytest.mark.parametrize("missing", ["irqchip", "pit"])
def test_a_vm_lacking_a_saved_device_says_which_to_create(missing: str) -> None:
    saved = with_devices().save_state()
    vm = pyfastvm.Vm(16 << 20)
    if missing == "pit":
        vm.create_irqchip()
    with pytest.raises(pyfastvm.InvalidArgumentError, match=rf"vm\.create_{missing}\(\)"):
        vm.restore_state(saved)


def test_the_json_form_round_trips_and_refuses_other_versions() -> None:
    text = with_devices().save_state().to_json()
    assert pyfastvm.VmState.from_json(text).to_json() == text
    document = json.loads(text)
    assert pyfastvm.VmState.from_document(document).to_json() == text
    assert (document["format"], document["version"]) == ("pyfastvm.VmState", 1)
    assert len(document["state"]["pit"]) == 112  # struct kvm_pit_state2
    document["version"] = 0
    with pytest.raises(pyfastvm.InvalidArgumentError, match="format version 0"):
        pyfastvm.VmState.from_json(json.dumps(document))
    with pytest.raises(ValueError, match="not a valid pyfastvm.VmState"):
        pyfastvm.VmState.from_json(text[:-2])
