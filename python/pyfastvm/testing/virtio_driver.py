"""A virtio driver by hand, for the tiny guest of `mmio_script`: the
virtio-mmio register offsets (virtio 1.2, 4.2.2), the driver's set-up
sequence (3.1.1) as script steps, and one split virtqueue (2.7) laid out in
guest memory, whose descriptors and available ring the host writes."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .._core import GuestMemory
from .mmio_script import MmioScript

MAGIC, VERSION, DEVICE_ID = 0x000, 0x004, 0x008
DEVICE_FEATURES, DEVICE_FEATURES_SEL = 0x010, 0x014
DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY = 0x030, 0x034, 0x038, 0x044
QUEUE_NOTIFY, INTERRUPT_STATUS, INTERRUPT_ACK, STATUS = 0x050, 0x060, 0x064, 0x070
QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE = 0x080, 0x090, 0x0A0
CONFIG = 0x100
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
VERSION_1_HIGH = 1  # VIRTIO_F_VERSION_1 is bit 32: bit 0 of the high word
DESC_F_NEXT, DESC_F_WRITE = 1, 2
DESCRIPTOR = struct.Struct("<QIHH")


@dataclass(frozen=True)
class SplitQueue:
    """A split virtqueue of `size` entries at `base` in guest memory: the
    descriptor table, then the available ring and the used ring a page apart."""

    base: int
    size: int

    @property
    def descriptors(self) -> int:
        return self.base

    @property
    def avail(self) -> int:
        return self.base + 0x1000

    @property
    def used(self) -> int:
        return self.base + 0x2000

    @property
    def used_idx(self) -> int:
        return self.used + 2

    def chain(self, memory: GuestMemory, head: int, buffers: list[tuple[int, int, bool]]) -> None:
        """Descriptors from `head` on for (address, length, device-writable) buffers."""
        for i, (address, length, writable) in enumerate(buffers):
            flags = (DESC_F_WRITE if writable else 0) | (DESC_F_NEXT if i + 1 < len(buffers) else 0)
            entry = DESCRIPTOR.pack(address, length, flags, head + i + 1)
            memory.write(self.descriptors + DESCRIPTOR.size * (head + i), entry)

    def offer(self, memory: GuestMemory, heads: list[int]) -> None:
        """Puts `heads` in the available ring; its index becomes len(heads)."""
        ring = b"".join(struct.pack("<H", head) for head in heads)
        memory.write(self.avail, struct.pack("<HH", 0, 0) + ring)

    def used_entry(self, memory: GuestMemory, slot: int) -> tuple[int, int]:
        """(head, length) of used ring entry `slot`."""
        data = memory.read(self.used + 4 + 8 * slot, 8)
        id_, length = struct.unpack("<II", data)
        return id_, length


def set_up(script: MmioScript, base: int, queue: SplitQueue) -> dict[str, int]:
    """The driver's initialisation of queue 0 up to DRIVER_OK, accepting only
    VERSION_1; returns the indices of the reads made on the way."""
    reads = {
        "magic": script.read(base + MAGIC),
        "version": script.read(base + VERSION),
        "device_id": script.read(base + DEVICE_ID),
    }
    script.write(base + STATUS, ACKNOWLEDGE)
    script.write(base + STATUS, ACKNOWLEDGE | DRIVER)
    script.write(base + DEVICE_FEATURES_SEL, 1)
    reads["features_high"] = script.read(base + DEVICE_FEATURES)
    script.write(base + DRIVER_FEATURES_SEL, 1)
    script.write(base + DRIVER_FEATURES, VERSION_1_HIGH)
    script.write(base + STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK)
    reads["features_ok"] = script.read(base + STATUS)
    script.write(base + QUEUE_SEL, 0)
    reads["queue_num_max"] = script.read(base + QUEUE_NUM_MAX)
    script.write(base + QUEUE_NUM, queue.size)
    for register, address in (
        (QUEUE_DESC, queue.descriptors),
        (QUEUE_DRIVER, queue.avail),
        (QUEUE_DEVICE, queue.used),
    ):
        script.write(base + register, address & 0xFFFF_FFFF)
        script.write(base + register + 4, address >> 32)
    script.write(base + QUEUE_READY, 1)
    script.write(base + STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
    return reads
