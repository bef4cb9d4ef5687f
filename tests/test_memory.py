"""Guest RAM: layout around the MMIO hole, copies, zero-copy views, bounds."""

from pathlib import Path

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


def test_vms_start_copy_on_write_from_shared_memory() -> None:
    """A VM on shared memory (a memfd) is what clones start from: each maps it
    privately, sees its contents, and writes only to its own copy."""
    template = pyfastvm.Vm(16 << 20, shared_memory=True)
    assert template.memory_fd is not None
    template.memory.write(0x1000, b"template")
    clones = [pyfastvm.Vm(16 << 20, memory_from=template.memory_fd) for _ in range(2)]
    clones[0].memory.write(0x1000, b"clone 0!")
    assert clones[1].memory.read(0x1000, 8) == b"template"
    assert template.memory.read(0x1000, 8) == b"template"
    assert clones[0].memory.read(0x1000, 8) == b"clone 0!"


def test_memory_dumps_sparse_and_maps_back(tmp_path: Path) -> None:
    vm = pyfastvm.Vm(5 * GiB)
    vm.memory.write(0x2000, b"low")
    vm.memory.write(4 * GiB + 0x1000, b"high")
    path = tmp_path / "memory"
    with path.open("wb") as file:
        assert vm.memory.dump(file.fileno()) == 2 * 4096
    assert path.stat().st_size == 5 * GiB and path.stat().st_blocks * 512 < 1 << 20
    with path.open("rb") as file:
        again = pyfastvm.Vm(5 * GiB, memory_from=file.fileno())
    assert again.memory.read(0x2000, 3) == b"low"
    assert again.memory.read(4 * GiB + 0x1000, 4) == b"high"


def test_a_memory_file_smaller_than_the_vm_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "memory"
    path.write_bytes(bytes(8 << 20))
    with (
        path.open("rb") as file,
        pytest.raises(pyfastvm.GuestMemoryError, match="holds 8 MiB, less than the VM's 16 MiB"),
    ):
        pyfastvm.Vm(16 << 20, memory_from=file.fileno())
