"""load_kernel: tell a bzImage from an ELF vmlinux and plan its boot."""

from __future__ import annotations

import os
from pathlib import Path

from .assemble import build_boot_plan
from .bzimage import is_bzimage, load_bzimage, parse_setup_header
from .decompress import decompress_bzimage, detect_format
from .elf import is_elf, load_elf
from .errors import KernelFormatError
from .plan import BootPlan, LoadedKernel


def load_kernel(
    kernel: Path | str | bytes,
    *,
    memory_size: int,
    cmdline: str,
    initrd: bytes | None = None,
    decompress: bool = False,
) -> BootPlan:
    """Plan the boot of a Linux kernel in a VM with ``memory_size`` bytes of RAM.

    ``kernel`` is a path to a bzImage or an ELF vmlinux, or the file's bytes.
    With ``decompress=True`` a bzImage's payload is decompressed on the host
    and booted as the ELF vmlinux inside it (with its PVH entry, if any).
    Nothing is written until ``BootPlan.write_to(vm.memory)``.
    """
    image, name = _read(kernel)
    loaded = _load(image, name, decompress)
    return build_boot_plan(loaded, memory_size=memory_size, cmdline=cmdline, initrd=initrd)


def _read(kernel: Path | str | bytes) -> tuple[bytes, str]:
    if isinstance(kernel, bytes):
        return kernel, "the kernel image"
    path = Path(os.fspath(kernel))
    return path.read_bytes(), f"kernel file {path}"


def _load(image: bytes, name: str, decompress: bool) -> LoadedKernel:
    if is_elf(image):
        return load_elf(image, name)
    if is_bzimage(image):
        header = parse_setup_header(image, name)
        if decompress:
            return load_elf(decompress_bzimage(image, header, name), name, header)
        return load_bzimage(image, header, name)
    raise KernelFormatError(_not_a_kernel(image, name))


def _not_a_kernel(image: bytes, name: str) -> str:
    message = (
        f"{name} is not a Linux kernel: no bzImage 'HdrS' magic at 0x202 and not an"
        f" ELF file (starts with {image[:16]!r}, {len(image)} bytes)"
    )
    compressed = detect_format(image)
    if compressed is not None:
        message += f"; it looks {compressed[0]}-compressed: decompress it first"
    elif len(image) < 0x206:
        message += "; it is too short to be a kernel: is the file truncated?"
    return message
