"""The guest loops the exit-latency benchmarks run, shared by pyfastvm and the
pure-Rust floor (benches/exit-floor) so both execute byte-identical code.

Each loop reads its count N from COUNT_ADDRESS, makes N exits, then writes
port 0xf4 (the end of a batch) and jumps back to its start for the next one.
"""

COUNT_ADDRESS = 0x8000
CODE_ADDRESS = 0x10000
SINK_PORT = 0x80
DONE_PORT = 0xF4
MMIO_SINK = 0xD000_0000

# start: mov ecx, [0x8000]; test ecx, ecx; jz done; 1: out 0x80, al; dec ecx; jnz 1b;
# done: out 0xf4, al; jmp start
PIO_LOOP = bytes.fromhex("8b0c250080000085c97406e680ffc975fae6f4ebeb")
# mov ebx, 0xd0000000; start: mov ecx, [0x8000]; test ecx, ecx; jz done;
# 1: mov [rbx], al; dec ecx; jnz 1b; done: out 0xf4, al; jmp start
MMIO_LOOP = bytes.fromhex("bb000000d08b0c250080000085c974068803ffc975fae6f4ebeb")
# start: mov esi, [0x8000]; test esi, esi; jz done; 1: xor eax, eax; cpuid; dec esi; jnz 1b;
# done: out 0xf4, al; jmp start
# (CPUID is answered inside KVM: no exit to userspace, the in-kernel floor)
CPUID_LOOP = bytes.fromhex("8b34250080000085f6740831c00fa2ffce75f8e6f4ebe9")
