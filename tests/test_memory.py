"""Guest RAM: layout around the MMIO hole, copies, zero-copy views, bounds."""

import pytest

import pyfastvm

pytestmark = pytest.mark.hwkvm

GiB = 1 << 30


def test_small_memory_is_one_region(vm: pyfastvm.Vm) -> None:
    assert vm.memory.regions == [(0, 16 << 20)]
    assert vm.memory_size == vm.memory.size == 16 << 20


def test_large_memory_leaves_the_32bit_mmio_hole() -> None:
    vm = pyfastvm.Vm(5 * GiB)
    assert vm.memory.regions == [(0, 3 * GiB), (4 * GiB, 2 * GiB)]
    vm.memory.write(4 * GiB + 8, b"high")
    assert vm.memory.read(4 * GiB + 8, 4) == b"high"
    with pytest.raises(pyfastvm.GuestMemoryError, match="0xc0000000"):
        vm.memory.read(pyfastvm.MMIO_HOLE_START, 1)


def test_read_back_what_was_written(vm: pyfastvm.Vm) -> None:
    vm.memory.write(0x1234, b"\x01\x02\x03")
    vm.memory.write(0x2000, bytearray(b"ba"))
    vm.memory.write(0x3000, memoryview(b"mv"))
    assert vm.memory.read(0x1233, 5) == b"\x00\x01\x02\x03\x00"
    assert vm.memory.read(0x2000, 2) == b"ba"
    assert vm.memory.read(0x3000, 2) == b"mv"


@pytest.mark.parametrize(
    "gpa, size",
    [(16 << 20, 1), ((16 << 20) - 2, 4), (2**64 - 1, 2), (0, (16 << 20) + 1)],
)
def test_out_of_range_access_raises(vm: pyfastvm.Vm, gpa: int, size: int) -> None:
    with pytest.raises(pyfastvm.GuestMemoryError, match="outside guest RAM"):
        vm.memory.write(gpa, bytes(size))
    with pytest.raises(pyfastvm.GuestMemoryError, match="outside guest RAM"):
        vm.memory.read(gpa, size)
    with pytest.raises(pyfastvm.GuestMemoryError, match="outside guest RAM"):
        vm.memory.view(gpa, size)


def test_view_is_zero_copy_both_ways(vm: pyfastvm.Vm) -> None:
    view = vm.memory.view(0x5000, 0x1000)
    assert len(view) == 0x1000 and not view.readonly
    view[0:4] = b"view"
    assert vm.memory.read(0x5000, 4) == b"view"
    vm.memory.write(0x5004, b"!")
    assert bytes(view[4:5]) == b"!"


def test_view_keeps_memory_alive_after_the_vm_is_gone() -> None:
    vm = pyfastvm.Vm(1 << 20)
    vm.memory.write(0, b"alive")
    view = vm.memory.view(0, 5)
    del vm
    assert bytes(view) == b"alive"


@pytest.mark.parametrize("size", [0, 4095, 12345])
def test_memory_size_must_be_whole_pages(size: int) -> None:
    with pytest.raises(pyfastvm.GuestMemoryError, match="multiple of 4 KiB"):
        pyfastvm.Vm(size)
