"""VMConfig: what a micro-VM is made of, checked before anything is created."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Literal

from ._core import VmmError

MIB = 1 << 20
MIN_MEMORY = 4 * MIB
MAX_VCPUS = 255
CMDLINE_LIMIT = 2047  # the x86 kernel's COMMAND_LINE_SIZE less its NUL
PIO_LIMIT = 0x1_0000
_SIZE = re.compile(r"(?P<number>\d+)\s*(?P<unit>[KMGT]?)(?:I?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ConfigError(VmmError, ValueError):
    """A VMConfig value is unusable; the message names it and the fix."""


def parse_size(size: int | str) -> int:
    """Bytes from an int or a size such as "256M", "1G", "512MiB", "4096"."""
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.fullmatch(size.strip())
        if match is None:
            raise ConfigError(
                f"memory size {size!r} is not a size: use bytes (268435456) or a number "
                "with K, M, G or T (256M, 1G, 512MiB)"
            )
        value = int(match["number"]) * _UNITS[match["unit"].upper()]
    if value <= 0:
        raise ConfigError(f"memory size {size!r} must be positive")
    return value


@dataclass(frozen=True)
class DeviceSpec:
    """A device to put on a bus: `device` is built in or any object with
    read(offset, size) and write(offset, data)."""

    bus: Literal["pio", "mmio"]
    base: int
    length: int
    device: object
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or type(self.device).__name__

    @property
    def end(self) -> int:
        return self.base + self.length


@dataclass(frozen=True)
class VMConfig:
    """A micro-VM: kernel, initrd, command line, memory, vCPUs and devices.
    Every value is checked on creation (ConfigError names what is wrong)."""

    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    memory: int | str = "256M"
    vcpus: int = 1
    devices: list[DeviceSpec] = field(default_factory=list)
    timeout: float | None = None

    def __post_init__(self) -> None:
        self._check_file("kernel", self.kernel, "pass kernel=PATH (--kernel PATH)")
        self._check_file("initrd", self.initrd, "pass initrd=PATH, or none")
        self._check_memory()
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ConfigError(f"vcpus={self.vcpus}: a VM has 1 to {MAX_VCPUS} vCPUs")
        self._check_cmdline()
        self._check_devices()
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"timeout={self.timeout}: give a positive number of seconds")

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @staticmethod
    def _check_file(what: str, path: Path | None, fix: str) -> None:
        if path is None:
            return
        if not Path(path).exists():
            raise ConfigError(f"the {what} {path} does not exist: {fix}")
        if not Path(path).is_file():
            raise ConfigError(f"the {what} {path} is not a regular file: {fix}")

    def _check_memory(self) -> None:
        size = self.memory_bytes
        if size < MIN_MEMORY or size % 4096:
            raise ConfigError(
                f"memory={self.memory!r}: give at least {MIN_MEMORY // MIB} MiB, "
                "in whole 4 KiB pages"
            )

    def _check_cmdline(self) -> None:
        if "\0" in self.cmdline:
            raise ConfigError("the kernel command line contains a NUL byte")
        if len(self.cmdline.encode()) > CMDLINE_LIMIT:
            raise ConfigError(
                f"the kernel command line has {len(self.cmdline.encode())} bytes; "
                f"the limit is {CMDLINE_LIMIT}"
            )

    def _check_devices(self) -> None:
        for spec in self.devices:
            if spec.length <= 0 or spec.base < 0:
                raise ConfigError(f"device {spec.label}: its range must be non-empty")
            if spec.bus == "pio" and spec.end > PIO_LIMIT:
                raise ConfigError(f"device {spec.label}: I/O ports end at 0xffff")
        for bus in ("pio", "mmio"):
            ranges = sorted((s for s in self.devices if s.bus == bus), key=lambda s: s.base)
            for low, high in pairwise(ranges):
                if low.end > high.base:
                    raise ConfigError(
                        f"{bus.upper()} devices {low.label} ({low.base:#x}-{low.end - 1:#x}) "
                        f"and {high.label} ({high.base:#x}-{high.end - 1:#x}) overlap"
                    )
