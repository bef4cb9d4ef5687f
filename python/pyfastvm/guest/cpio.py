"""The "newc" cpio format (magic ``070701``) that Linux unpacks as initramfs.

Each entry is a 110-byte ASCII header (the magic plus 13 fields of 8 hex
digits: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
rdevmajor, rdevminor, namesize, check), the NUL-terminated name padded so
that header + name is a multiple of 4 bytes, then the data padded to a
multiple of 4.  A symlink's data is its target.  The archive ends with an
entry named ``TRAILER!!!``.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

from pyfastvm.guest.errors import CpioFormatError

MAGIC = b"070701"
CRC_MAGIC = b"070702"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
FIELD_COUNT = 13
FIELD_WIDTH = 8
MAX_FIELD = 0xFFFFFFFF


@dataclass(frozen=True)
class CpioEntry:
    """One archive member: ``mode`` holds both the file type and permissions."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> CpioEntry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return cls(name, stat.S_IFCHR | perm, rdev=(major, minor))

    @property
    def perm(self) -> int:
        return stat.S_IMODE(self.mode)

    @property
    def link_target(self) -> str:
        """The target of a symlink entry."""
        if not stat.S_ISLNK(self.mode):
            raise ValueError(f"cpio entry {self.name!r} is not a symlink")
        return self.data.decode()


def write_cpio(entries: Iterable[CpioEntry]) -> bytes:
    """Serialize ``entries`` (parents before children) plus the trailer."""
    out = bytearray()
    for ino, entry in enumerate(entries, start=1):
        _check_entry(entry)
        out += _record(_archive_name(entry.name), entry, ino)
    out += _record(TRAILER, CpioEntry(TRAILER, 0), 0)
    return bytes(out)


def read_cpio(archive: bytes) -> list[CpioEntry]:
    """Parse a newc archive up to its trailer; names come back without a ``/``."""
    entries: list[CpioEntry] = []
    offset = 0
    while True:
        entry, offset = _read_record(archive, offset)
        if entry.name == TRAILER:
            return entries
        entries.append(entry)


def _record(name: str, entry: CpioEntry, ino: int) -> bytes:
    encoded_name = name.encode("utf-8", "surrogateescape") + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino, entry.mode, 0, 0, nlink, 0, len(entry.data),
        0, 0, entry.rdev[0], entry.rdev[1], len(encoded_name), 0,
    )  # fmt: skip
    header = MAGIC + b"".join(b"%08X" % value for value in fields)
    head = header + encoded_name
    return head + _padding(len(head)) + entry.data + _padding(len(entry.data))


def _read_record(archive: bytes, offset: int) -> tuple[CpioEntry, int]:
    fields = _read_header(archive, offset)
    mode, filesize, rdev_major, rdev_minor, namesize = (
        fields[1], fields[6], fields[9], fields[10], fields[11],
    )  # fmt: skip
    name_start = offset + HEADER_SIZE
    data_start = _align(name_start + namesize)
    data_end = data_start + filesize
    if namesize == 0 or data_end > len(archive):
        raise CpioFormatError(
            f"cpio entry at byte {offset} runs past the end of the archive "
            f"({len(archive)} bytes); the archive is truncated"
        )
    raw_name = archive[name_start : name_start + namesize].rstrip(b"\0")
    name = raw_name.decode("utf-8", "surrogateescape")
    entry = CpioEntry(name, mode, archive[data_start:data_end], (rdev_major, rdev_minor))
    return entry, _align(data_end)


def _read_header(archive: bytes, offset: int) -> list[int]:
    header = archive[offset : offset + HEADER_SIZE]
    if len(header) < HEADER_SIZE:
        raise CpioFormatError(
            f"cpio archive ends at byte {len(archive)} without a {TRAILER} entry; "
            "the archive is truncated"
        )
    magic = header[:6]
    if magic != MAGIC:
        kind = " (the CRC variant, not supported)" if magic == CRC_MAGIC else ""
        raise CpioFormatError(
            f"bad cpio magic {magic!r}{kind} at byte {offset}: expected {MAGIC!r} "
            "(newc format, as written by 'cpio -H newc')"
        )
    try:
        return [
            int(header[6 + i * FIELD_WIDTH : 6 + (i + 1) * FIELD_WIDTH], 16)
            for i in range(FIELD_COUNT)
        ]
    except ValueError:
        raise CpioFormatError(f"cpio header at byte {offset} has non-hex fields") from None


def _check_entry(entry: CpioEntry) -> None:
    name = _archive_name(entry.name)
    if not name or name == TRAILER or "\0" in name:
        raise ValueError(f"invalid cpio entry name {entry.name!r}")
    if ".." in name.split("/"):
        raise ValueError(f"cpio entry name {entry.name!r} must not contain '..'")
    if stat.S_IFMT(entry.mode) == 0:
        raise ValueError(f"cpio entry {entry.name!r} has no file type in mode {entry.mode:o}")
    if entry.data and not (stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode)):
        raise ValueError(f"cpio entry {entry.name!r}: only files and symlinks carry data")
    if len(entry.data) > MAX_FIELD or max(entry.rdev) > MAX_FIELD:
        raise ValueError(f"cpio entry {entry.name!r} is too large for the newc format")


def _archive_name(name: str) -> str:
    """Archive names are relative to the root: ``/bin/sh`` is stored as ``bin/sh``."""
    return name.strip("/")


def _align(offset: int) -> int:
    return (offset + 3) & ~3


def _padding(length: int) -> bytes:
    return b"\0" * (_align(length) - length)
