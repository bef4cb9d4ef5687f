"""Devices built into the Rust core; guest accesses to them never enter Python."""

from ._core import BuiltinDevice, DebugExit, Sink

__all__ = ["BuiltinDevice", "DebugExit", "Sink"]
