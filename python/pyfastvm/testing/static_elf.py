"""A minimal static ELF executable around machine code: no compiler, no C
library, byte-identical on every host (for the guest programs of tests and
benchmarks)."""

from __future__ import annotations

import struct

LOAD_ADDRESS = 0x400000
ELF_HEADER_SIZE, PROGRAM_HEADER_SIZE = 64, 56
PF_X, PF_W, PF_R = 1, 2, 4


def static_elf(code: bytes, *, bss: int = 0) -> bytes:
    """An ELF-64 executable (System V gABI) whose one PT_LOAD segment maps the
    file read+execute at LOAD_ADDRESS and whose entry point is `code`; with
    `bss`, that many zeroed bytes follow it, and the segment is writable."""
    headers = ELF_HEADER_SIZE + PROGRAM_HEADER_SIZE
    size = headers + len(code)
    flags = PF_R | PF_X | (PF_W if bss else 0)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # 64-bit, little-endian, version 1
    elf_header = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        62,  # EM_X86_64
        1,  # EV_CURRENT
        LOAD_ADDRESS + headers,  # e_entry
        ELF_HEADER_SIZE,  # e_phoff
        0,  # e_shoff
        0,  # e_flags
        ELF_HEADER_SIZE,
        PROGRAM_HEADER_SIZE,
        1,  # e_phnum
        0,  # e_shentsize
        0,  # e_shnum
        0,  # e_shstrndx
    )
    program_header = struct.pack(
        "<IIQQQQQQ",
        1,  # PT_LOAD
        flags,
        0,  # p_offset
        LOAD_ADDRESS,  # p_vaddr
        LOAD_ADDRESS,  # p_paddr
        size,  # p_filesz
        size + bss,  # p_memsz
        0x1000,  # p_align
    )
    return elf_header + program_header + code
