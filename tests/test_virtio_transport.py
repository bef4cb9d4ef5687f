"""The virtio-mmio transport and the devices' queue handling, driven by hand
from a tiny guest (pyfastvm.testing.mmio_script): real MMIO register
accesses, QueueNotify completed inside KVM through the ioeventfd, the
device's work on its own thread, its answer in the used ring."""

from __future__ import annotations

import gc
import struct
from pathlib import Path

import pytest
from process_resources import open_fds, os_threads, os_threads_after_exits

import pyfastvm
from pyfastvm.devices import DebugExit, VirtioBlk, VirtioRng, VirtioVsock
from pyfastvm.testing import virtio_driver as virtio
from pyfastvm.testing.mmio_script import MmioScript, results, script_vcpu

pytestmark = pytest.mark.hwkvm

QUEUE = virtio.SplitQueue(base=0x100000, size=16)
BUFFERS = 0x200000
MAGIC_VALUE = 0x74726976  # "virt"
VIRTIO_ID_BLOCK, VIRTIO_ID_RNG = 2, 4
BLK_T_IN, BLK_T_OUT, BLK_T_FLUSH, BLK_T_GET_ID = 0, 1, 4, 8
BLK_S_OK, BLK_S_IOERR, BLK_S_UNSUPP = 0, 1, 2
SECTOR = 512


def virtio_vm(device: object) -> tuple[pyfastvm.Vm, pyfastvm.DeviceInfo]:
    vm = pyfastvm.Vm(16 << 20)
    vm.create_irqchip()
    vm.add_pio_device(0xF4, 1, DebugExit())
    info = vm.add_mmio_device(None, VirtioRng.WINDOW, device, gsi=vm.allocate_gsi())
    return vm, info


def notify_and_wait(script: MmioScript, base: int, used: int) -> None:
    script.write(base + virtio.QUEUE_NOTIFY, 0)
    script.wait16(QUEUE.used_idx, used)


def rng_served_once() -> tuple[pyfastvm.Vm, pyfastvm.DeviceInfo]:
    """A VM whose guest set up an rng device and had one buffer filled."""
    vm, info = virtio_vm(VirtioRng())
    QUEUE.chain(vm.memory, 0, [(BUFFERS, 16, True)])
    QUEUE.offer(vm.memory, [0])
    vm.memory.write(QUEUE.avail + 2, struct.pack("<H", 1))
    script = MmioScript()
    virtio.set_up(script, info.base, QUEUE)
    notify_and_wait(script, info.base, 1)
    assert script_vcpu(vm, script).run().reason == "debug_exit"
    return vm, info


def test_a_guest_sets_up_the_rng_and_gets_entropy_with_an_interrupt() -> None:
    vm, info = virtio_vm(VirtioRng())
    QUEUE.chain(vm.memory, 0, [(BUFFERS, 64, True)])
    QUEUE.offer(vm.memory, [0])
    vm.memory.write(QUEUE.avail + 2, struct.pack("<H", 1))
    script = MmioScript()
    reads = virtio.set_up(script, info.base, QUEUE)
    notify_and_wait(script, info.base, 1)
    reads["interrupt"] = script.read(info.base + virtio.INTERRUPT_STATUS)
    script.write(info.base + virtio.INTERRUPT_ACK, 1)
    reads["acknowledged"] = script.read(info.base + virtio.INTERRUPT_STATUS)
    script.write(info.base + virtio.STATUS, 0)
    reads["after_reset"] = script.read(info.base + virtio.STATUS)
    reads["ready_after_reset"] = script.read(info.base + virtio.QUEUE_READY)

    assert script_vcpu(vm, script).run().reason == "debug_exit"

    value = dict(zip(reads, (results(vm, script)[i] for i in reads.values()), strict=True))
    assert value["magic"] == MAGIC_VALUE
    assert value["version"] == 2
    assert value["device_id"] == VIRTIO_ID_RNG
    assert value["features_high"] & virtio.VERSION_1_HIGH
    assert value["features_ok"] & virtio.FEATURES_OK
    assert value["queue_num_max"] >= QUEUE.size
    assert value["interrupt"] == 1  # a used buffer
    assert value["acknowledged"] == 0
    assert value["after_reset"] == 0 and value["ready_after_reset"] == 0
    assert QUEUE.used_entry(vm.memory, 0) == (0, 64)
    assert vm.memory.read(BUFFERS, 64) != bytes(64)


def blk_request(kind: int, sector: int, slot: int, data: tuple[int, bool] | None) -> list:
    """Header, data buffer (length, device-writable) and status of request `slot`."""
    header = BUFFERS + 0x10000 * slot
    buffers = [(header, 16, False)]
    if data is not None:
        buffers.append((header + 0x1000, data[0], data[1]))
    buffers.append((header + 0x8000, 1, True))
    return [struct.pack("<IIQ", kind, 0, sector), buffers]


def test_a_guest_reads_writes_and_flushes_a_disk(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"".join(bytes([n]) * SECTOR for n in range(8)))
    disk = VirtioBlk(image)
    vm, info = virtio_vm(disk)
    requests = [
        (BLK_T_IN, 1, (SECTOR * 2, True)),  # sectors 1 and 2
        (BLK_T_OUT, 4, (SECTOR, False)),
        (BLK_T_FLUSH, 0, None),
        (BLK_T_IN, 7, (SECTOR * 2, True)),  # past the end
        (BLK_T_GET_ID + 100, 0, None),  # no such request
    ]
    heads = []
    for slot, (kind, sector, data) in enumerate(requests):
        header, buffers = blk_request(kind, sector, slot, data)
        vm.memory.write(buffers[0][0], header)
        if kind == BLK_T_OUT:
            vm.memory.write(buffers[1][0], b"\xab" * SECTOR)
        QUEUE.chain(vm.memory, 3 * slot, buffers)
        heads.append(3 * slot)
    QUEUE.offer(vm.memory, heads)
    vm.memory.write(QUEUE.avail + 2, struct.pack("<H", len(heads)))
    script = MmioScript()
    reads = virtio.set_up(script, info.base, QUEUE)
    notify_and_wait(script, info.base, len(heads))

    assert script_vcpu(vm, script).run().reason == "debug_exit"

    assert results(vm, script)[reads["device_id"]] == VIRTIO_ID_BLOCK
    statuses = [vm.memory.read(BUFFERS + 0x10000 * slot + 0x8000, 1)[0] for slot in range(5)]
    assert statuses == [BLK_S_OK, BLK_S_OK, BLK_S_OK, BLK_S_IOERR, BLK_S_UNSUPP]
    assert vm.memory.read(BUFFERS + 0x1000, 2 * SECTOR) == b"\x01" * SECTOR + b"\x02" * SECTOR
    assert image.read_bytes()[4 * SECTOR : 5 * SECTOR] == b"\xab" * SECTOR
    assert QUEUE.used_entry(vm.memory, 0) == (0, 2 * SECTOR + 1)
    assert disk.capacity == 8 * SECTOR


def test_features_ok_sticks_only_with_version_1_and_the_config_space_reads() -> None:
    rng = VirtioRng()
    rng.write(virtio.STATUS, struct.pack("<I", virtio.ACKNOWLEDGE | virtio.DRIVER))
    rng.write(virtio.STATUS, struct.pack("<I", virtio.ACKNOWLEDGE | virtio.DRIVER | 8))
    assert struct.unpack("<I", rng.read(virtio.STATUS, 4))[0] & virtio.FEATURES_OK == 0
    rng.write(virtio.STATUS, struct.pack("<I", 0))
    assert struct.unpack("<I", rng.read(virtio.STATUS, 4))[0] == 0


def test_blk_config_space_and_read_only(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(3 * SECTOR + 100))
    disk = VirtioBlk(image, read_only=True)
    assert struct.unpack("<Q", disk.read(virtio.CONFIG, 8))[0] == 3  # sectors
    assert struct.unpack("<I", disk.read(virtio.CONFIG + 20, 4))[0] == SECTOR  # blk_size
    disk.write(virtio.DEVICE_FEATURES_SEL, struct.pack("<I", 0))
    features = struct.unpack("<I", disk.read(virtio.DEVICE_FEATURES, 4))[0]
    assert features & 1 << 5  # VIRTIO_BLK_F_RO
    assert not disk.discard and disk.read_only


def test_device_threads_park_on_pause_end_on_stop_and_leak_nothing() -> None:
    def run_once() -> None:
        vm, _ = rng_served_once()
        vm.pause()  # returns once the device thread is parked
        vm.resume()
        vm.stop()

    run_once()
    gc.collect()
    threads, fds = os_threads(), open_fds()
    for _ in range(5):
        run_once()
    gc.collect()
    assert (os_threads_after_exits(threads), open_fds()) == (threads, fds)


def test_transport_state_keeps_registers_and_queue_positions() -> None:
    _, info = rng_served_once()
    device = info.device
    assert isinstance(device, VirtioRng)
    state = device.save_state()
    assert state["registers"]["status"] == 0xF
    assert state["queues"][0]["next_avail"] == 1 and state["queues"][0]["size"] == QUEUE.size
    fresh = VirtioRng()
    fresh.restore_state({**state, "registers": {**state["registers"], "status": 0}})
    assert fresh.save_state()["queues"] == state["queues"]


def test_bad_images_and_socket_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(pyfastvm.InvalidArgumentError, match="cannot open the disk image"):
        VirtioBlk(tmp_path / "missing.img")
    taken = tmp_path / "taken.sock"
    taken.touch()
    with pytest.raises(pyfastvm.InvalidArgumentError, match="remove it or pick another"):
        VirtioVsock(3, taken)
    with pytest.raises(pyfastvm.InvalidArgumentError, match="cid"):
        VirtioVsock(2, tmp_path / "v.sock")
    socket = tmp_path / "v.sock"
    vsock = VirtioVsock(3, socket)
    assert socket.exists() and vsock.cid == 3
    del vsock
    gc.collect()
    assert not socket.exists()
