"""Reader for the Unix ``ar`` archive format, the outer wrapper of a ``.deb``.

Layout: the global magic ``!<arch>\\n``, then for every member a 60-byte
ASCII header (name 16, mtime 12, uid 6, gid 6, octal mode 8, decimal size 10,
terminator ``\\x60\\n``) followed by the data, padded with ``\\n`` to an even
offset.  Names may end with ``/`` (GNU style) and are space padded.  Long
name tables (GNU ``//`` and BSD ``#1/``) are not used by ``.deb`` files and
are rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyfastvm.guest.errors import DebFormatError

AR_MAGIC = b"!<arch>\n"
HEADER_SIZE = 60
HEADER_END = b"`\n"


@dataclass(frozen=True)
class ArMember:
    """One file stored in an ``ar`` archive."""

    name: str
    mode: int
    data: bytes


def read_ar(archive: bytes, *, source: str = "archive") -> list[ArMember]:
    """Parse an ``ar`` archive held in memory; ``source`` names it in errors."""
    if not archive.startswith(AR_MAGIC):
        raise DebFormatError(
            f"{source} is not an ar archive (a .deb must start with {AR_MAGIC!r}, "
            f"found {archive[:8]!r}); the download is corrupt or not a Debian package, "
            "delete it and fetch again"
        )
    members: list[ArMember] = []
    offset = len(AR_MAGIC)
    while offset < len(archive):
        member, offset = _read_member(archive, offset, source)
        members.append(member)
    return members


def _read_member(archive: bytes, offset: int, source: str) -> tuple[ArMember, int]:
    header = archive[offset : offset + HEADER_SIZE]
    if len(header) < HEADER_SIZE or header[58:60] != HEADER_END:
        raise DebFormatError(
            f"{source}: bad ar member header at byte {offset}; the file is truncated "
            "or corrupt, delete it and fetch again"
        )
    name = _member_name(header[0:16], offset, source)
    mode = _header_number(header[40:48], 8, "mode", offset, source)
    size = _header_number(header[48:58], 10, "size", offset, source)
    start = offset + HEADER_SIZE
    if start + size > len(archive):
        raise DebFormatError(
            f"{source}: member {name!r} claims {size} bytes but the archive ends "
            f"after {len(archive) - start}; the file is truncated, fetch it again"
        )
    data = archive[start : start + size]
    return ArMember(name=name, mode=mode, data=data), start + size + (size % 2)


def _member_name(raw: bytes, offset: int, source: str) -> str:
    name = raw.decode("ascii", errors="replace").rstrip(" ")
    if name.startswith("#1/") or name in ("/", "//"):
        raise DebFormatError(
            f"{source}: ar member at byte {offset} uses a long-name table ({name!r}), "
            "which .deb files never contain"
        )
    return name.removesuffix("/")


def _header_number(field: bytes, base: int, what: str, offset: int, source: str) -> int:
    text = field.decode("ascii", errors="replace").strip()
    try:
        return int(text or "0", base)
    except ValueError:
        raise DebFormatError(
            f"{source}: ar member header at byte {offset} has a non-numeric {what} "
            f"field {text!r}; the file is corrupt"
        ) from None
