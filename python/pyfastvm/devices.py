"""Devices built into the Rust core; guest accesses to them never enter Python."""

from ._core import (
    I8042,
    BuiltinDevice,
    DebugExit,
    PmTimer,
    PowerControl,
    Serial,
    Sink,
    restore_device_state,
    save_device_state,
)

__all__ = [
    "I8042",
    "BuiltinDevice",
    "DebugExit",
    "PmTimer",
    "PowerControl",
    "Serial",
    "Sink",
    "restore_device_state",
    "save_device_state",
]
