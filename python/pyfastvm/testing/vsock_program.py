"""A guest program for vsock tests and benchmarks: a static x86-64 Linux
executable, as machine code with its assembly beside it, that opens one
vsock stream and copies bytes over it; no compiler or C library needed.

- ``connect`` mode: connects to the host (CID 2) on `port`, sends its
  standard input, half-closes, then writes what the host sends back to its
  standard output;
- ``listen`` mode: listens on `port`, accepts one connection and echoes
  everything it receives until the host half-closes.

It exits with status 0, or 1 when a system call fails.
"""

from __future__ import annotations

import struct
from typing import Literal

from .static_elf import static_elf

AF_VSOCK = 40
HOST_CID = 2
ANY_CID = 0xFFFF_FFFF  # VMADDR_CID_ANY
BUFFER_SIZE = 1 << 16

# GNU as, Intel syntax; `mode` and `address` (a struct sockaddr_vm) follow
# the code, the 64 KiB `buffer` follows them as bss.
# socket(AF_VSOCK, SOCK_STREAM, 0), then connect (mode 0) or bind, listen and
# accept (mode 1); copy(from edi, to esi) copies until end of file.
# _start:
#   mov edi, 40
#   mov esi, 1
#   xor edx, edx
#   mov eax, 41
#   syscall
#   test eax, eax
#   js fail
#   mov r12d, eax
#   lea rsi, [rip + address]
#   mov edx, 16
#   mov edi, r12d
#   cmp byte ptr [rip + mode], 0
#   jne listen
#   mov eax, 42
#   syscall
#   test eax, eax
#   jnz fail
#   xor edi, edi
#   mov esi, r12d
#   call copy
#   mov edi, r12d
#   mov esi, 1
#   mov eax, 48
#   syscall
#   mov edi, r12d
#   mov esi, 1
#   call copy
#   jmp done
# listen:
#   mov eax, 49
#   syscall
#   test eax, eax
#   jnz fail
#   mov edi, r12d
#   mov esi, 1
#   mov eax, 50
#   syscall
#   test eax, eax
#   jnz fail
#   mov edi, r12d
#   xor esi, esi
#   xor edx, edx
#   mov eax, 43
#   syscall
#   test eax, eax
#   js fail
#   mov edi, eax
#   mov esi, eax
#   call copy
# done:
#   xor edi, edi
#   mov eax, 60
#   syscall
# fail:
#   mov edi, 1
#   mov eax, 60
#   syscall
# copy:
#   mov r13d, edi
#   mov r14d, esi
# read:
#   mov edi, r13d
#   lea rsi, [rip + buffer]
#   mov edx, 65536
#   xor eax, eax
#   syscall
#   test rax, rax
#   js fail
#   jz eof
#   mov r15, rax
#   lea rbx, [rip + buffer]
# write:
#   mov edi, r14d
#   mov rsi, rbx
#   mov rdx, r15
#   mov eax, 1
#   syscall
#   test rax, rax
#   jle fail
#   add rbx, rax
#   sub r15, rax
#   jnz write
#   jmp read
# eof:
#   ret
CODE = bytes.fromhex(
    "bf28000000be0100000031d2b8290000000f0585c00f88900000004189c4488d"
    "35dd000000ba100000004489e7803dcd000000007533b82a0000000f0585c075"
    "6a31ff4489e6e86c0000004489e7be01000000b8300000000f054489e7be0100"
    "0000e850000000eb39b8310000000f0585c075374489e7be01000000b8320000"
    "000f0585c075244489e731f631d2b82b0000000f0585c0781289c789c6e81500"
    "000031ffb83c0000000f05bf01000000b83c0000000f054189fd4189f64489ef"
    "488d354b000000ba0000010031c00f054885c078d674294989c7488d1d310000"
    "004489f74889de4c89fab8010000000f054885c07eb54801c34929c775e3ebbd"
    "c3"
)
MODES = {"connect": 0, "listen": 1}


def vsock_stream_program(mode: Literal["connect", "listen"], port: int) -> bytes:
    """The program as an ELF executable, for `mode` on vsock `port`."""
    cid = HOST_CID if mode == "connect" else ANY_CID
    address = struct.pack("<HHIIB3x", AF_VSOCK, 0, port, cid, 0)
    return static_elf(CODE + bytes([MODES[mode]]) + address, bss=BUFFER_SIZE)
