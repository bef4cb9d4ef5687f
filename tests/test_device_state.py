"""Device state: each built-in device saves its state and a new one is
rebuilt from it; Python devices through snapshot()/restore()."""

from __future__ import annotations

import os
from typing import Any

import pytest

import pyfastvm
from pyfastvm.devices import (
    I8042,
    DebugExit,
    PmTimer,
    PowerControl,
    Serial,
    Sink,
    restore_device_state,
    save_device_state,
)

pytestmark = pytest.mark.hwkvm

# 16550A register offsets (with DLAB clear unless said).
DATA, IER, LCR, MCR, LSR, SCRATCH = 0, 1, 3, 4, 5, 7
DIVISOR_LOW, DIVISOR_HIGH = 0, 1  # with DLAB set
LCR_DLAB, LCR_8N1 = 0x80, 0x03
IER_RECEIVED_DATA = 0x01
LSR_DATA_READY = 0x01


def register(device: Serial, offset: int) -> int:
    return device.read(offset, 1)[0]


def programmed_serial() -> Serial:
    """A UART set up as a guest driver would, with input waiting."""
    serial = Serial()
    serial.write(LCR, bytes([LCR_DLAB]))
    serial.write(DIVISOR_LOW, b"\x0c")  # 9600 baud
    serial.write(DIVISOR_HIGH, b"\x00")
    serial.write(LCR, bytes([LCR_8N1]))
    serial.write(IER, bytes([IER_RECEIVED_DATA]))
    serial.write(MCR, b"\x0b")
    serial.write(SCRATCH, b"\x5a")
    serial.write(DATA, b"out")  # transmitted: not part of the state
    assert serial.write_input(b"abc") == 3
    return serial


def drain_eventfd(fd: int) -> int:
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except BlockingIOError:
        return 0


def test_a_serial_port_is_rebuilt_with_its_registers_and_unread_input() -> None:
    state = programmed_serial().save_state()
    assert state["scratch"] == 0x5A and state["in_buffer"] == list(b"abc")

    serial = Serial()
    drain_eventfd(serial.irq_fd)
    serial.restore_state(state)
    # Received data with its interrupt enabled: the rebuilt UART raises it.
    assert drain_eventfd(serial.irq_fd) >= 1
    assert (register(serial, LCR), register(serial, IER), register(serial, MCR)) == (3, 1, 0x0B)
    assert register(serial, SCRATCH) == 0x5A
    serial.write(LCR, bytes([LCR_DLAB | LCR_8N1]))
    assert (register(serial, DIVISOR_LOW), register(serial, DIVISOR_HIGH)) == (0x0C, 0)
    serial.write(LCR, bytes([LCR_8N1]))
    assert register(serial, LSR) & LSR_DATA_READY
    assert bytes(register(serial, DATA) for _ in range(3)) == b"abc"
    assert not register(serial, LSR) & LSR_DATA_READY
    assert serial.read_output() == b""  # output stays with the device that sent it


def test_a_serial_state_that_is_not_one_is_refused() -> None:
    state = Serial().save_state()
    with pytest.raises(pyfastvm.InvalidArgumentError, match="not a Serial state"):
        Serial().restore_state({"scratch": 1})
    state["in_buffer"] = [0] * 65  # more than the 64-byte FIFO
    with pytest.raises(pyfastvm.InvalidArgumentError, match="at most 64 unread bytes"):
        Serial().restore_state(state)


def pm_timer_count(timer: PmTimer) -> int:
    return int.from_bytes(timer.read(0, 4), "little")


def test_the_pm_timer_goes_on_from_its_saved_count() -> None:
    saved = {"running_ns": 2_000_000_000}  # two seconds: 7,159,090 ticks
    timer = PmTimer()
    timer.restore_state(saved)
    assert pm_timer_count(timer) >= 2 * PmTimer.FREQUENCY
    assert timer.save_state()["running_ns"] >= saved["running_ns"]
    again = PmTimer()
    again.restore_state(timer.save_state())
    assert again.save_state()["running_ns"] >= saved["running_ns"]


@pytest.mark.parametrize("kind", [Sink, DebugExit, I8042, PowerControl])
def test_devices_without_state_save_an_empty_one(
    kind: type[pyfastvm.devices.BuiltinDevice],
) -> None:
    device = kind()
    assert device.save_state() == {}
    device.restore_state({})
    with pytest.raises(pyfastvm.InvalidArgumentError, match="keeps no state"):
        device.restore_state({"running_ns": 1})


class Latch(pyfastvm.Device):
    """A Python device with one register and snapshot()/restore()."""

    def __init__(self) -> None:
        self.value = 0

    def read(self, offset: int, size: int) -> bytes:
        return self.value.to_bytes(size, "little")

    def write(self, offset: int, data: bytes) -> None:
        self.value = int.from_bytes(data, "little")

    def snapshot(self) -> dict[str, Any]:
        return {"value": self.value, "history": [1.5, None, True, "x"]}

    def restore(self, state: dict[str, Any]) -> None:
        self.value = state["value"]


def test_a_python_device_is_saved_through_its_snapshot_and_restore() -> None:
    latch = Latch()
    latch.write(0, b"\x2a")
    state = save_device_state(latch)
    assert state == {"value": 42, "history": [1.5, None, True, "x"]}
    again = Latch()
    restore_device_state(again, state)
    assert again.read(0, 1) == b"\x2a"
    # Built-in devices go through the same functions.
    assert save_device_state(Sink()) == {}


def test_a_python_device_state_must_be_json_compatible() -> None:
    class Raw(Latch):
        def snapshot(self) -> dict[str, Any]:
            return {"bytes": b"\x00"}

    with pytest.raises(pyfastvm.InvalidArgumentError, match=r"Raw\.snapshot\(\).*bytes"):
        save_device_state(Raw())


def test_a_python_device_without_snapshot_keeps_no_state() -> None:
    class Bare:
        def read(self, offset: int, size: int) -> bytes:
            return bytes(size)

        def write(self, offset: int, data: bytes) -> None:
            pass

    assert save_device_state(Bare()) == {}
    with pytest.raises(pyfastvm.InvalidArgumentError, match="Bare keeps no state"):
        restore_device_state(Bare(), {"value": 1})

    class Stateless(pyfastvm.Device):
        read = Bare.read
        write = Bare.write

    assert save_device_state(Stateless()) == {}
    with pytest.raises(ValueError, match="Stateless keeps no state"):
        restore_device_state(Stateless(), {"value": 1})
