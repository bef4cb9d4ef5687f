"""Assembling the initramfs: busybox, device nodes and the generated init.

The result is an uncompressed newc cpio archive (the kernel accepts it
as-is, no decompressor needed) laid out as::

    /init                 generated script (see init_script.init_script)
    /pyfastvm/report      generated reporter (see init_script.report_script)
    /bin/busybox          static busybox, plus symlinks for the applets init uses
    /dev/console c 5 1    opened by the kernel for init's stdio before /init runs
    /dev/null    c 1 3    until devtmpfs is mounted over /dev
    /proc /sys /tmp /root (empty mount points and directories)

Every run gets a fresh nonce, so the archive is rebuilt per run instead of
cached; building it takes a few milliseconds.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyfastvm.guest.cpio import CpioEntry, write_cpio
from pyfastvm.guest.debian import busybox_static
from pyfastvm.guest.errors import GuestImageError
from pyfastvm.guest.init_script import (
    INIT_APPLETS,
    REPORT_PATH,
    init_script,
    report_script,
    serving_init_script,
)

ELF_MAGIC = b"\x7fELF"
PT_INTERP = 3
DIRECTORIES = (("bin", 0o755), ("dev", 0o755), ("proc", 0o555), ("sys", 0o555),
               ("tmp", 0o1777), ("root", 0o700), ("pyfastvm", 0o755))  # fmt: skip
DEVICES = (("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666))


def build_initramfs(
    command: Sequence[str],
    *,
    nonce: str,
    busybox: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> bytes:
    """An initramfs that runs ``command`` once and reports on the console.

    ``busybox`` is a statically linked busybox binary; by default Debian's
    ``busybox-static`` is fetched (once) with :func:`busybox_static`.
    ``env`` adds environment variables for the command.
    """
    binary = load_static_busybox(busybox if busybox is not None else busybox_static())
    return write_cpio(initramfs_entries(command, nonce=nonce, busybox=binary, env=env))


def build_serving_initramfs(*, busybox: Path | None = None) -> bytes:
    """An initramfs whose init boots and then waits for its command on the
    console (init_script.serving_init_script): what a snapshot is taken of."""
    binary = load_static_busybox(busybox if busybox is not None else busybox_static())
    return write_cpio(_entries(serving_init_script(), binary))


def initramfs_entries(
    command: Sequence[str],
    *,
    nonce: str,
    busybox: bytes,
    env: Mapping[str, str] | None = None,
) -> list[CpioEntry]:
    """The archive members of :func:`build_initramfs`, parents first."""
    return _entries(init_script(command, nonce=nonce, env=env), busybox)


def _entries(init: str, busybox: bytes) -> list[CpioEntry]:
    entries = busybox_root(busybox)
    entries.append(CpioEntry.file(REPORT_PATH, report_script().encode(), 0o755))
    entries.append(CpioEntry.file("init", init.encode(), 0o755))
    return entries


def busybox_root(
    busybox: bytes, directories: Sequence[tuple[str, int]] = DIRECTORIES
) -> list[CpioEntry]:
    """The start of every pyfastvm initramfs: ``directories``, the console and
    null devices, a static busybox and links to the applets init needs."""
    entries = [CpioEntry.directory(name, perm) for name, perm in directories]
    entries += [CpioEntry.char_device(name, *rdev_perm) for name, *rdev_perm in DEVICES]
    entries.append(CpioEntry.file("bin/busybox", busybox, 0o755))
    entries += [CpioEntry.symlink(f"bin/{applet}", "busybox") for applet in INIT_APPLETS]
    return entries


def load_static_busybox(path: Path) -> bytes:
    """Read ``path`` and check it is a statically linked ELF executable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GuestImageError(
            f"cannot read busybox at {path}: {exc.strerror}; pass busybox=PATH to a "
            "statically linked busybox, or omit it to use Debian's busybox-static"
        ) from exc
    if not data.startswith(ELF_MAGIC):
        raise GuestImageError(f"busybox at {path} is not an ELF executable")
    if _has_interpreter(data):
        raise GuestImageError(
            f"busybox at {path} is dynamically linked, but the initramfs has no C "
            "library; use a static build (Debian package busybox-static)"
        )
    return data


def _has_interpreter(elf: bytes) -> bool:
    """True if a 64-bit little-endian ELF has a PT_INTERP program header."""
    if len(elf) < 64 or elf[4] != 2 or elf[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        offset = phoff + index * phentsize
        if offset + 4 <= len(elf) and struct.unpack_from("<I", elf, offset)[0] == PT_INTERP:
            return True
    return False
