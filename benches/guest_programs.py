"""Linux user programs for the benchmarks, as machine code in a minimal static
ELF executable: no compiler, no C library, byte-identical on every host."""

from __future__ import annotations

import struct

LOAD_ADDRESS = 0x400000
ELF_HEADER_SIZE, PROGRAM_HEADER_SIZE = 64, 56


def getppid_loop(count: int) -> bytes:
    """Calls getppid `count` times (1 or more), then exits with status 0.

    mov ebx, count; 1: mov eax, 110; syscall; dec ebx; jnz 1b;
    mov eax, 60; xor edi, edi; syscall
    """
    loop = bytes.fromhex("b86e0000000f05ffcb75f5b83c00000031ff0f05")
    return static_elf(b"\xbb" + struct.pack("<I", count) + loop)


def static_elf(code: bytes) -> bytes:
    """An ELF-64 executable (System V gABI) whose one PT_LOAD segment maps the
    file read+execute at LOAD_ADDRESS and whose entry point is `code`."""
    headers = ELF_HEADER_SIZE + PROGRAM_HEADER_SIZE
    size = headers + len(code)
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
        5,  # PF_R | PF_X
        0,  # p_offset
        LOAD_ADDRESS,  # p_vaddr
        LOAD_ADDRESS,  # p_paddr
        size,  # p_filesz
        size,  # p_memsz
        0x1000,  # p_align
    )
    return elf_header + program_header + code
