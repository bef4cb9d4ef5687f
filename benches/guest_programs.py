"""Linux user programs for the benchmarks, as machine code in a minimal static
ELF executable: no compiler, no C library, byte-identical on every host."""

from __future__ import annotations

import struct

from pyfastvm.testing.static_elf import static_elf


def getppid_loop(count: int) -> bytes:
    """Calls getppid `count` times (1 or more), then exits with status 0.

    mov ebx, count; 1: mov eax, 110; syscall; dec ebx; jnz 1b;
    mov eax, 60; xor edi, edi; syscall
    """
    loop = bytes.fromhex("b86e0000000f05ffcb75f5b83c00000031ff0f05")
    return static_elf(b"\xbb" + struct.pack("<I", count) + loop)
