"""VMConfig: what a micro-VM is made of, checked before anything is created."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Literal

from ._core import VmmError
from .boot.layout import MIB, MMIO_HOLE_END, MMIO_HOLE_START, PAGE_SIZE, ram_ranges

# A floor that catches unit slips (memory=256 is 256 bytes). It is far below
# what a kernel needs on purpose: the kernel loader knows that figure and says it.
MIN_MEMORY = 4 * MIB
MAX_VCPUS = 255
CMDLINE_LIMIT = 2047  # the x86 kernel's COMMAND_LINE_SIZE (2048) less its NUL
BUS_LIMITS = {"pio": 1 << 16, "mmio": 1 << 64}  # x86 I/O ports are 16-bit
SIZE_FORMS = "bytes as an int or digits (268435456), or digits with K, M, G or T (256M, 1G, 512MiB)"
_SIZE = re.compile(r"(?P<number>\d+)\s*(?:(?P<unit>[KMGT])(?:I?B)?|B)?", re.IGNORECASE)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ConfigError(VmmError, ValueError):
    """A VMConfig value is unusable; the message names it and the fix."""


def parse_size(size: int | str) -> int:
    """Bytes from a positive int or a size such as "256M", "1G", "512MiB",
    "4096". Units are binary: K is 1024."""
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise ConfigError(f"memory size {size!r} is a {type(size).__name__}: give {SIZE_FORMS}")
    value = size if isinstance(size, int) else _parse_size_text(size)
    if value <= 0:
        raise ConfigError(f"memory size {size!r} must be positive: give {SIZE_FORMS}")
    return value


def _parse_size_text(size: str) -> int:
    match = _SIZE.fullmatch(size.strip())
    if match is None:
        raise ConfigError(f"memory size {size!r} is not a size: give {SIZE_FORMS}")
    unit = match["unit"]
    return int(match["number"]) * (_UNITS[unit.upper()] if unit else 1)


@dataclass(frozen=True)
class DeviceSpec:
    """A device to put on a bus at [base, base + length): `device` is built in
    (pyfastvm.devices) or any object with read(offset, size) and
    write(offset, data). `id` names it in the VM (by default its class's
    name); `gsi` is its interrupt line, if it has one."""

    bus: Literal["pio", "mmio"]
    base: int
    length: int
    device: object
    id: str | None = None
    gsi: int | None = None

    @property
    def label(self) -> str:
        """The id, or the device's class name when it has none."""
        return self.id or type(self.device).__name__

    @property
    def end(self) -> int:
        return self.base + self.length

    def describe(self) -> str:
        """Label, bus and range, for error messages."""
        return f"{self.label} ({self.bus} {self.base:#x}-{self.end - 1:#x})"


SECTOR = 512
SOCKET_PATH_LIMIT = 107  # sockaddr_un's sun_path less its NUL
FIRST_GUEST_CID = 3


@dataclass(frozen=True)
class Disk:
    """A virtio-blk disk backed by the raw image at `path`, read-write unless
    `read_only`. The guest sees the disks as /dev/vda, /dev/vdb, ... in
    order; `root=/dev/vda` on the command line makes pyfastvm's runner run
    the command in that filesystem."""

    path: Path | str
    read_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def parse(cls, text: str) -> Disk:
        """``PATH`` or ``PATH,ro`` (``PATH,rw``), as ``--disk`` takes it."""
        path, _, mode = text.rpartition(",") if text.endswith((",ro", ",rw")) else (text, "", "")
        return cls(path, read_only=mode == "ro")

    def check(self) -> None:
        """Raises ConfigError unless the image can be opened as asked."""
        path = Path(self.path)
        fix = "pass a raw disk image (e.g. made with mke2fs or truncate)"
        _check_file("disk image", path, fix)
        size = path.stat().st_size
        if size < SECTOR:
            raise ConfigError(
                f"the disk image {path} has {size} bytes: a disk holds at least one "
                f"{SECTOR}-byte sector; {fix}"
            )
        if not os.access(path, os.R_OK):
            raise ConfigError(f"the disk image {path} is not readable: check its permissions")
        if not self.read_only and not _writable(path):
            raise ConfigError(
                f"the disk image {path} is read-only, and the disk asks for read-write: "
                "attach it with read_only=True (CLI: --disk PATH,ro), or make it writable"
            )


def _writable(path: Path) -> bool:
    """Writable by us and by its mode: root may write any file, but a file
    with no write bit is meant to stay as it is."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


@dataclass(frozen=True)
class Vsock:
    """A virtio-vsock device: the guest is context id `cid`; host programs
    connect to the Unix socket `path` (which pyfastvm creates, and removes
    with the VM) and write ``CONNECT <port>\\n`` to reach the guest's
    listener on that port; a guest connection to host (CID 2) port P reaches
    the Unix listener at ``<path>_P``."""

    path: Path | str
    cid: int = FIRST_GUEST_CID

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def check(self) -> None:
        """Raises ConfigError unless the socket can be created at `path`."""
        path = Path(self.path)
        if isinstance(self.cid, bool) or not FIRST_GUEST_CID <= self.cid < 0xFFFF_FFFF:
            raise ConfigError(
                f"vsock cid={self.cid!r}: give a context id from {FIRST_GUEST_CID} "
                "(0-2 are the hypervisor's and the host's) to 2**32 - 2"
            )
        if len(os.fsencode(path)) > SOCKET_PATH_LIMIT - len("_4294967295"):
            raise ConfigError(
                f"the vsock socket path {path} is too long for a Unix socket (with its "
                f"_PORT listeners, at most {SOCKET_PATH_LIMIT - 11} bytes): pick a shorter one"
            )
        if path.exists() or path.is_symlink():
            raise ConfigError(
                f"the vsock socket path {path} exists already: remove it or pick another"
            )
        parent = path.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(
                f"the vsock socket {path} cannot be created: {parent} is not a writable directory"
            )


@dataclass(frozen=True)
class VMConfig:
    """A micro-VM: kernel, initrd, command line, memory, vCPUs and devices.

    Every value is checked on creation, so a VMConfig that exists is valid;
    ConfigError names what is wrong and how to fix it. Mutating ``devices``
    afterwards bypasses that; call ``validate()`` again if you do.
    """

    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    memory: int | str = "256M"
    vcpus: int = 1
    devices: list[DeviceSpec] = field(default_factory=list)
    timeout: float | None = None
    # virtio devices: disks (/dev/vda, ...), a vsock channel, an entropy source.
    disks: list[Disk] = field(default_factory=list)
    vsock: Vsock | None = None
    rng: bool = False

    def __post_init__(self) -> None:
        # Accept str paths too; the rest of pyfastvm sees Path.
        for name in ("kernel", "initrd"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        self.validate()

    @property
    def memory_bytes(self) -> int:
        """Guest RAM in bytes."""
        return parse_size(self.memory)

    def validate(self) -> None:
        """Raises ConfigError for the first unusable value."""
        _check_file(
            "kernel", self.kernel, "pass kernel=PATH (CLI: --kernel PATH) to a bzImage or vmlinux"
        )
        _check_file("initrd", self.initrd, "pass initrd=PATH (CLI: --initrd PATH), or leave it out")
        self._check_memory()
        if isinstance(self.vcpus, bool) or not isinstance(self.vcpus, int):
            raise ConfigError(f"vcpus={self.vcpus!r}: give a whole number from 1 to {MAX_VCPUS}")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ConfigError(f"vcpus={self.vcpus}: a VM has 1 to {MAX_VCPUS} vCPUs")
        self._check_cmdline()
        _check_devices(self.devices, self.memory_bytes)
        if self.timeout is not None and not self.timeout > 0:  # NaN fails too
            raise ConfigError(
                f"timeout={self.timeout}: give a positive number of seconds, or None for none"
            )
        self._check_virtio()

    def _check_virtio(self) -> None:
        for disk in self.disks:
            if not isinstance(disk, Disk):
                raise ConfigError(f"disks: {disk!r} is not a pyfastvm.Disk(path, read_only=...)")
            disk.check()
        if self.vsock is not None:
            if not isinstance(self.vsock, Vsock):
                raise ConfigError(f"vsock={self.vsock!r}: give a pyfastvm.Vsock(path, cid=3)")
            self.vsock.check()

    def _check_memory(self) -> None:
        size = self.memory_bytes
        if size < MIN_MEMORY:
            raise ConfigError(
                f"memory={self.memory!r} is {size} bytes: give at least {MIN_MEMORY // MIB} MiB "
                "(a Linux kernel needs tens of MiB; sizes take units, e.g. 256M)"
            )
        if size % PAGE_SIZE:
            raise ConfigError(
                f"memory={self.memory!r} is {size} bytes: give whole 4 KiB pages (e.g. 256M)"
            )

    def _check_cmdline(self) -> None:
        if "\0" in self.cmdline:
            raise ConfigError("the kernel command line contains a NUL byte: remove it")
        length = len(self.cmdline.encode())
        if length > CMDLINE_LIMIT:
            raise ConfigError(
                f"the kernel command line has {length} bytes; the limit is {CMDLINE_LIMIT} "
                "(the x86 kernel's COMMAND_LINE_SIZE less its NUL)"
            )


def _check_file(what: str, path: Path | None, fix: str) -> None:
    if path is None:
        return
    if not path.exists():
        raise ConfigError(f"the {what} {path} does not exist: {fix}")
    if not path.is_file():
        raise ConfigError(f"the {what} {path} is not a regular file: {fix}")


def _check_devices(devices: list[DeviceSpec], memory_size: int) -> None:
    for spec in devices:
        _check_device(spec, memory_size)
    for bus in BUS_LIMITS:
        on_bus = sorted((spec for spec in devices if spec.bus == bus), key=lambda s: s.base)
        for low, high in pairwise(on_bus):
            if low.end > high.base:
                raise ConfigError(
                    f"devices {low.describe()} and {high.describe()} overlap: move one"
                )


def _check_device(spec: DeviceSpec, memory_size: int) -> None:
    if spec.bus not in BUS_LIMITS:
        raise ConfigError(f"device {spec.label}: bus {spec.bus!r} is not 'pio' or 'mmio'")
    if spec.base < 0 or spec.length <= 0:
        raise ConfigError(
            f"device {spec.label}: base {spec.base:#x}, length {spec.length}: "
            "give a base >= 0 and a length >= 1"
        )
    limit = BUS_LIMITS[spec.bus]
    if spec.end > limit:
        raise ConfigError(
            f"device {spec.describe()} goes past the {spec.bus} bus's end {limit - 1:#x}"
        )
    missing = [m for m in ("read", "write") if not callable(getattr(spec.device, m, None))]
    if missing:
        raise ConfigError(
            f"device {spec.label}: {type(spec.device).__name__} has no {' or '.join(missing)} "
            "method: a device needs read(offset, size) -> bytes and write(offset, data)"
        )
    if spec.bus == "mmio":
        _check_outside_ram(spec, memory_size)


def _check_outside_ram(spec: DeviceSpec, memory_size: int) -> None:
    """KVM serves guest RAM itself, so a device under it would never be reached."""
    for start, end in ram_ranges(memory_size):
        if spec.base < end and start < spec.end:
            raise ConfigError(
                f"device {spec.describe()} lies in guest RAM ({start:#x}-{end - 1:#x}), "
                "where the guest would never reach it: place MMIO devices in the hole "
                f"{MMIO_HOLE_START:#x}-{MMIO_HOLE_END - 1:#x} or above the end of RAM"
            )
