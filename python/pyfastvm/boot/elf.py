"""Loading an ELF64 x86-64 vmlinux at its physical addresses."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

from .bzimage import SetupHeader
from .errors import KernelFormatError
from .layout import HIGH_MEMORY_START, MMIO_HOLE_END
from .plan import LoadedKernel, Region, Segment
from .zeropage import minimal_setup_header

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18
XEN_NOTE_NAME = b"Xen"

# For a vmlinux without a bzImage around it: x86 COMMAND_LINE_SIZE (2048)
# less the NUL, and the initrd_addr_max x86-64 kernels declare.
DEFAULT_CMDLINE_SIZE = 2047
DEFAULT_INITRD_ADDR_MAX = 0x7FFF_FFFF

# Elf64_Ehdr and Elf64_Phdr (System V ABI, "ELF Header", "Program Header").
ELF64_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
ELF64_PHDR = struct.Struct("<IIQQQQQQ")
ELF64_NHDR = struct.Struct("<III")

_MACHINES = {3: "EM_386", 40: "EM_ARM", 183: "EM_AARCH64", 243: "EM_RISCV", 62: "EM_X86_64"}
_TYPES = {1: "ET_REL (object file)", 3: "ET_DYN (shared object or PIE)", 4: "ET_CORE"}


@dataclass(frozen=True)
class ElfHeader:
    """The Elf64_Ehdr fields the loader uses."""

    e_type: int
    e_machine: int
    e_entry: int
    e_phoff: int
    e_phentsize: int
    e_phnum: int


@dataclass(frozen=True)
class ProgramHeader:
    """Elf64_Phdr."""

    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_align: int


def is_elf(image: bytes) -> bool:
    return image.startswith(ELF_MAGIC)


def parse_elf_header(image: bytes, name: str) -> ElfHeader:
    """Read Elf64_Ehdr and check it describes an x86-64 executable."""
    if len(image) < ELF64_EHDR.size:
        raise KernelFormatError(
            f"{name} is {len(image)} bytes long: too short for an ELF64 header"
            f" ({ELF64_EHDR.size} bytes); the file is truncated"
        )
    ident, e_type, e_machine, _, e_entry, e_phoff, *_, phentsize, phnum, _, _, _ = (
        ELF64_EHDR.unpack_from(image)
    )
    _check_ident(ident, name)
    _check_type_and_machine(e_type, e_machine, name)
    return ElfHeader(e_type, e_machine, e_entry, e_phoff, phentsize, phnum)


def _check_ident(ident: bytes, name: str) -> None:
    if not ident.startswith(ELF_MAGIC):
        raise KernelFormatError(f"{name} is not an ELF file (starts with {ident[:4]!r})")
    if ident[4] != ELFCLASS64:
        raise KernelFormatError(
            f"{name} is ELF class {ident[4]} (1 is 32-bit), not ELFCLASS64:"
            " use a 64-bit x86-64 vmlinux"
        )
    if ident[5] != ELFDATA2LSB or ident[6] != EV_CURRENT:
        raise KernelFormatError(
            f"{name} has ELF data encoding {ident[5]} and version {ident[6]};"
            " an x86-64 vmlinux is little-endian (1), version 1"
        )


def _check_type_and_machine(e_type: int, e_machine: int, name: str) -> None:
    if e_machine != EM_X86_64:
        machine = _MACHINES.get(e_machine, "unknown")
        raise KernelFormatError(
            f"{name} is an ELF file for machine {e_machine} ({machine}), not"
            f" x86-64 (EM_X86_64, {EM_X86_64}): use an x86-64 kernel"
        )
    if e_type != ET_EXEC:
        kind = _TYPES.get(e_type, "unknown")
        raise KernelFormatError(
            f"{name} is ELF type {e_type} ({kind}), not ET_EXEC: it is a program or"
            " library, not a vmlinux kernel"
        )


def program_headers(image: bytes, header: ElfHeader, name: str) -> tuple[ProgramHeader, ...]:
    """All Elf64_Phdr entries, each checked to lie inside the file."""
    if header.e_phentsize != ELF64_PHDR.size:
        raise KernelFormatError(
            f"{name}: e_phentsize is {header.e_phentsize}, not {ELF64_PHDR.size}:"
            " the ELF header is damaged"
        )
    end = header.e_phoff + header.e_phnum * ELF64_PHDR.size
    if end > len(image):
        raise KernelFormatError(f"{name} is truncated: its program headers end at {end:#x}")
    phdrs = tuple(
        ProgramHeader(*ELF64_PHDR.unpack_from(image, header.e_phoff + i * ELF64_PHDR.size))
        for i in range(header.e_phnum)
    )
    for phdr in phdrs:
        _check_in_file(phdr, len(image), name)
    return phdrs


def _check_in_file(phdr: ProgramHeader, file_size: int, name: str) -> None:
    end = phdr.p_offset + phdr.p_filesz
    if end > file_size:
        raise KernelFormatError(
            f"{name} is truncated: a segment ends at file offset {end:#x} but the"
            f" file has {file_size:#x} bytes"
        )
    if phdr.p_type == PT_LOAD and phdr.p_filesz > phdr.p_memsz:
        raise KernelFormatError(
            f"{name}: a PT_LOAD segment at {phdr.p_paddr:#x} has p_filesz > p_memsz"
        )


def load_segments(image: bytes, loads: Sequence[ProgramHeader], name: str) -> tuple[Segment, ...]:
    """PT_LOAD segments at p_paddr, zero-filled from p_filesz to p_memsz."""
    if not loads:
        raise KernelFormatError(f"{name} has no PT_LOAD segment: nothing to load")
    segments = tuple(
        Segment(
            p.p_paddr,
            image[p.p_offset : p.p_offset + p.p_filesz],
            f"kernel segment {i}",
            zero_fill=p.p_memsz - p.p_filesz,
        )
        for i, p in enumerate(loads)
    )
    _check_placement(segments, name)
    return segments


def _check_placement(segments: Sequence[Segment], name: str) -> None:
    ordered = sorted(segments, key=lambda s: s.gpa)
    if ordered[0].gpa < HIGH_MEMORY_START:
        raise KernelFormatError(
            f"{name} has a segment at physical {ordered[0].gpa:#x}, below 1 MiB where"
            " the boot structures live: link the kernel at 1 MiB or higher"
        )
    for low, high in pairwise(ordered):
        if low.end > high.gpa:
            raise KernelFormatError(
                f"{name}: PT_LOAD segments at {low.gpa:#x} and {high.gpa:#x} overlap"
            )


def entry_paddr(e_entry: int, loads: Sequence[ProgramHeader], name: str) -> int:
    """The entry's physical address (a vmlinux's e_entry may be virtual)."""
    for p in loads:
        if p.p_vaddr <= e_entry < p.p_vaddr + p.p_memsz:
            return e_entry - p.p_vaddr + p.p_paddr
    for p in loads:
        if p.p_paddr <= e_entry < p.p_paddr + p.p_memsz:
            return e_entry
    raise KernelFormatError(
        f"{name}: entry point {e_entry:#x} lies in no PT_LOAD segment: the ELF is damaged"
    )


def notes(image: bytes, phdrs: Sequence[ProgramHeader]) -> Iterator[tuple[bytes, int, bytes]]:
    """(name, type, desc) of each ELF note in the PT_NOTE segments."""
    for phdr in phdrs:
        if phdr.p_type == PT_NOTE:
            yield from _notes_in(image[phdr.p_offset : phdr.p_offset + phdr.p_filesz])


def _notes_in(data: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    pos = 0
    while pos + ELF64_NHDR.size <= len(data):
        namesz, descsz, note_type = ELF64_NHDR.unpack_from(data, pos)
        name_at = pos + ELF64_NHDR.size
        desc_at = name_at + _pad4(namesz)
        if desc_at + descsz > len(data):
            return
        note_name = data[name_at : name_at + namesz].rstrip(b"\0")
        yield note_name, note_type, data[desc_at : desc_at + descsz]
        pos = desc_at + _pad4(descsz)


def _pad4(size: int) -> int:
    return (size + 3) & ~3


def pvh_entry(image: bytes, phdrs: Sequence[ProgramHeader], name: str) -> int | None:
    """XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry's physical address."""
    for note_name, note_type, desc in notes(image, phdrs):
        if note_name == XEN_NOTE_NAME and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
            entry = int.from_bytes(desc[:8], "little")
            if not desc or entry >= MMIO_HOLE_END:
                raise KernelFormatError(
                    f"{name}: the PVH entry note holds {desc.hex()}, not a 32-bit address"
                )
            return entry
    return None


def load_elf(image: bytes, name: str, setup_header: SetupHeader | None = None) -> LoadedKernel:
    """Plan a vmlinux boot; ``setup_header`` is that of the bzImage it came from."""
    header = parse_elf_header(image, name)
    phdrs = program_headers(image, header, name)
    loads = [p for p in phdrs if p.p_type == PT_LOAD]
    segments = load_segments(image, loads, name)
    start = min(s.gpa for s in segments)
    return LoadedKernel(
        kind="ELF",
        name=name,
        segments=segments,
        footprint=Region("kernel", start, max(s.end for s in segments) - start),
        entry_64=entry_paddr(header.e_entry, loads, name),
        pvh_entry=pvh_entry(image, phdrs, name),
        setup_header=setup_header.pack() if setup_header else minimal_setup_header(),
        cmdline_size=setup_header.cmdline_size if setup_header else DEFAULT_CMDLINE_SIZE,
        initrd_addr_max=(setup_header.initrd_addr_max if setup_header else DEFAULT_INITRD_ADDR_MAX),
    )
