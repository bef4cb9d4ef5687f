"""Kernel loading (pyfastvm.boot): the real Debian kernel, crafted and damaged images.

Guest memory is a bytearray behind the GuestMemoryWriter interface, so what
was written where can be read back; no KVM is involved.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
from itertools import pairwise
from pathlib import Path

import pytest
import zstandard

from pyfastvm.boot import (
    BootError,
    BootPlan,
    CommandLineError,
    E820Type,
    GuestMemoryTooSmallError,
    GuestMemoryWriter,
    KernelFormatError,
    Segment,
    build_e820,
    decompress_bzimage,
    layout,
    load_kernel,
    pack_e820,
    parse_setup_header,
)
from pyfastvm.boot.bzimage import CAN_USE_HEAP, LOADED_HIGH, XLF_KERNEL_64, SetupHeader
from pyfastvm.boot.elf import PT_LOAD, load_elf, parse_elf_header, program_headers
from pyfastvm.boot.placement import ram_needed
from pyfastvm.guest.debian import debian_kernel

MIB = 1 << 20
GIB = 1 << 30
CMDLINE = "console=ttyS0 panic=-1 quiet"


class FakeGuestMemory:
    """Low guest RAM as a bytearray; a write outside it fails the test."""

    def __init__(self, size: int, fill: int = 0) -> None:
        self.ram = bytearray([fill]) * size

    def write(self, gpa: int, data: bytes) -> None:
        assert gpa + len(data) <= len(self.ram), f"write at {gpa:#x} is outside RAM"
        self.ram[gpa : gpa + len(data)] = data

    def u8(self, gpa: int) -> int:
        return self.ram[gpa]

    def u16(self, gpa: int) -> int:
        return int.from_bytes(self.ram[gpa : gpa + 2], "little")

    def u32(self, gpa: int) -> int:
        return int.from_bytes(self.ram[gpa : gpa + 4], "little")

    def u64(self, gpa: int) -> int:
        return int.from_bytes(self.ram[gpa : gpa + 8], "little")


def written(plan: BootPlan, size: int, fill: int = 0) -> FakeGuestMemory:
    memory = FakeGuestMemory(size, fill)
    plan.write_to(memory)
    return memory


# --- the real kernel ---------------------------------------------------------


@pytest.fixture(scope="module")
def kernel_path() -> Path:
    return debian_kernel()


@pytest.fixture(scope="module")
def kernel(kernel_path: Path) -> bytes:
    return kernel_path.read_bytes()


@pytest.fixture(scope="module")
def header(kernel: bytes) -> SetupHeader:
    return parse_setup_header(kernel, "debian kernel")


@pytest.fixture(scope="module")
def vmlinux(kernel: bytes, header: SetupHeader) -> bytes:
    return decompress_bzimage(kernel, header, "debian kernel")


def test_real_kernel_header_is_sane(header: SetupHeader) -> None:
    assert header.boot_flag == 0xAA55
    assert header.header == int.from_bytes(b"HdrS", "little")
    assert header.version >= 0x020C
    assert header.relocatable_kernel
    assert header.xloadflags & XLF_KERNEL_64
    assert header.loadflags & LOADED_HIGH
    assert header.setup_sects > 0
    alignment = header.kernel_alignment
    assert alignment >= 0x1000 and alignment & (alignment - 1) == 0
    assert header.pref_address >= layout.HIGH_MEMORY_START
    assert 8 * MIB < header.init_size < 256 * MIB
    assert header.cmdline_size >= 255
    assert header.initrd_addr_max >= 0x37FF_FFFF
    assert header.payload_length > MIB


def test_bzimage_plan_enters_at_load_address_plus_0x200(
    kernel: bytes, header: SetupHeader, kernel_path: Path
) -> None:
    plan = load_kernel(kernel_path, memory_size=128 * MIB, cmdline=CMDLINE)
    assert plan.kind == "bzImage"
    assert plan.entry_64 == 0x100000 + 0x200
    assert plan.zero_page_addr == 0x7000
    assert plan.pvh_entry is None and plan.start_info_addr is None
    code = plan.region("kernel")
    assert code.start == 0x100000 and code.size == header.syssize * 16
    memory = written(plan, 128 * MIB)
    start = header.setup_size
    assert memory.ram[0x100000 : 0x100000 + 4096] == kernel[start : start + 4096]


def test_bytes_and_path_give_the_same_plan(kernel: bytes, kernel_path: Path) -> None:
    from_path = load_kernel(kernel_path, memory_size=128 * MIB, cmdline=CMDLINE)
    from_bytes = load_kernel(kernel, memory_size=128 * MIB, cmdline=CMDLINE)
    assert from_path.segments == from_bytes.segments


def test_zero_page_fields(kernel: bytes, header: SetupHeader) -> None:
    initrd = os.urandom(3 * MIB + 123)
    plan = load_kernel(kernel, memory_size=128 * MIB, cmdline=CMDLINE, initrd=initrd)
    memory = written(plan, 128 * MIB)
    zp = plan.zero_page_addr
    assert memory.u16(zp + 0x1FE) == 0xAA55
    assert memory.ram[zp + 0x202 : zp + 0x206] == b"HdrS"
    assert memory.u16(zp + 0x206) == header.version
    assert memory.u8(zp + 0x1EF) == 0  # sentinel
    assert memory.u8(zp + 0x1F1) == header.setup_sects
    assert memory.u16(zp + 0x1FA) == 0xFFFF  # vid_mode
    assert memory.u8(zp + 0x210) == 0xFF  # type_of_loader
    assert memory.u8(zp + 0x211) & (LOADED_HIGH | CAN_USE_HEAP) == LOADED_HIGH | CAN_USE_HEAP
    assert memory.u16(zp + 0x224) == 0xE000 - 0x200  # heap_end_ptr
    assert memory.u32(zp + 0x260) == header.init_size
    assert memory.u32(zp + 0x228) == 0x20000  # cmd_line_ptr
    assert memory.u32(zp + 0x0C8) == 0  # ext_cmd_line_ptr
    cmdline = CMDLINE.encode() + b"\0"
    assert memory.ram[0x20000 : 0x20000 + len(cmdline)] == cmdline
    initrd_region = plan.region("initrd")
    assert memory.u32(zp + 0x218) == initrd_region.start  # ramdisk_image
    assert memory.u32(zp + 0x21C) == len(initrd)  # ramdisk_size
    assert memory.u32(zp + 0x0C0) == 0 and memory.u32(zp + 0x0C4) == 0
    assert memory.ram[initrd_region.start : initrd_region.end] == initrd


def test_zero_page_e820_table(kernel: bytes) -> None:
    plan = load_kernel(kernel, memory_size=128 * MIB, cmdline=CMDLINE)
    memory = written(plan, 128 * MIB)
    zp = plan.zero_page_addr
    e820 = build_e820(128 * MIB)
    assert memory.u8(zp + 0x1E8) == len(e820) == len(plan.e820)
    table = memory.ram[zp + 0x2D0 : zp + 0x2D0 + 20 * len(e820)]
    assert bytes(table) == pack_e820(e820)
    assert memory.ram[zp + 0x2D0 + 20 * len(e820) : zp + 0x1000] == bytes(
        0x1000 - 0x2D0 - 20 * len(e820)
    )


def test_initrd_goes_as_high_as_possible(kernel: bytes, header: SetupHeader) -> None:
    initrd = b"\x5a" * (5 * MIB + 17)
    plan = load_kernel(kernel, memory_size=200 * MIB, cmdline=CMDLINE, initrd=initrd)
    region = plan.region("initrd")
    assert region.start % 4096 == 0
    assert region.end <= 200 * MIB < region.start + 4096 + len(initrd)
    footprint = plan.region("kernel runtime (init_size)")
    assert footprint.start == header.pref_address
    assert footprint.size == header.init_size
    assert region.start >= footprint.end


def test_initrd_stays_below_initrd_addr_max(kernel: bytes, header: SetupHeader) -> None:
    plan = load_kernel(kernel, memory_size=3 * GIB, cmdline=CMDLINE, initrd=bytes(MIB))
    region = plan.region("initrd")
    assert region.end <= header.initrd_addr_max + 1
    assert region.start == (header.initrd_addr_max + 1 - MIB) & ~0xFFF


def test_memory_too_small_names_the_numbers(kernel: bytes, header: SetupHeader) -> None:
    initrd = bytes(3 * MIB)
    with pytest.raises(GuestMemoryTooSmallError) as caught:
        load_kernel(kernel, memory_size=8 * MIB, cmdline=CMDLINE, initrd=initrd)
    error = caught.value
    kernel_end = max(header.pref_address, 0x100000) + header.init_size
    assert error.needed == kernel_end + 3 * MIB
    assert error.memory_size == 8 * MIB
    message = str(error)
    assert "the VM has 8 MiB" in message
    assert "initrd 3 MiB" in message
    assert f"raise memory= to at least {-(-error.needed // MIB)} MiB" in message


def test_memory_exactly_enough_is_accepted(kernel: bytes, header: SetupHeader) -> None:
    needed = header.pref_address + header.init_size + 2 * MIB
    plan = load_kernel(kernel, memory_size=needed, cmdline=CMDLINE, initrd=bytes(2 * MIB))
    assert plan.region("initrd").end == needed
    with pytest.raises(GuestMemoryTooSmallError):
        load_kernel(kernel, memory_size=needed - 4096, cmdline=CMDLINE, initrd=bytes(2 * MIB))


def test_command_line_limits(kernel: bytes, header: SetupHeader) -> None:
    longest = "x" * header.cmdline_size
    load_kernel(kernel, memory_size=128 * MIB, cmdline=longest)
    with pytest.raises(CommandLineError, match="shorten it by 1 bytes"):
        load_kernel(kernel, memory_size=128 * MIB, cmdline=longest + "x")
    with pytest.raises(CommandLineError, match="NUL"):
        load_kernel(kernel, memory_size=128 * MIB, cmdline="a\0b")


# --- host-side decompression and the ELF vmlinux -------------------------------


def test_decompression_yields_an_elf_with_loads_and_pvh_note(
    header: SetupHeader, vmlinux: bytes, kernel: bytes
) -> None:
    payload_start = header.setup_size + header.payload_offset
    assert kernel[payload_start : payload_start + 4] == b"\x02\x21\x4c\x18"  # LZ4 legacy
    assert vmlinux.startswith(b"\x7fELF")
    elf = parse_elf_header(vmlinux, "vmlinux")
    loads = [p for p in program_headers(vmlinux, elf, "vmlinux") if p.p_type == PT_LOAD]
    assert len(loads) >= 2
    assert all(p.p_paddr >= header.pref_address for p in loads)
    loaded = load_elf(vmlinux, "vmlinux")
    assert loaded.pvh_entry is not None
    assert loads[0].p_paddr <= loaded.pvh_entry < loads[0].p_paddr + loads[0].p_memsz


def test_elf_entry_is_physical_startup_64(vmlinux: bytes, header: SetupHeader) -> None:
    loaded = load_elf(vmlinux, "vmlinux", header)
    elf = parse_elf_header(vmlinux, "vmlinux")
    first = program_headers(vmlinux, elf, "vmlinux")[0]
    # phys_startup_64 is the start of .text: the first PT_LOAD, at pref_address.
    assert loaded.entry_64 == first.p_paddr == header.pref_address
    assert loaded.segments[0].data[:16] == vmlinux[first.p_offset : first.p_offset + 16]


def test_decompressed_plan_writes_kernel_zero_page_and_start_info(kernel: bytes) -> None:
    initrd = b"initrd" * 1000
    plan = load_kernel(
        kernel, memory_size=128 * MIB, cmdline=CMDLINE, initrd=initrd, decompress=True
    )
    assert plan.kind == "ELF"
    assert plan.pvh_entry is not None and plan.start_info_addr == 0x6000
    memory = written(plan, 128 * MIB)
    for segment in plan.segments:
        assert memory.ram[segment.gpa : segment.gpa + len(segment.data)] == segment.data
    assert memory.u32(plan.zero_page_addr + 0x228) == 0x20000
    assert memory.u32(plan.zero_page_addr + 0x218) == plan.region("initrd").start


def test_hvm_start_info_layout(kernel: bytes) -> None:
    initrd = bytes(range(256)) * 64
    plan = load_kernel(
        kernel, memory_size=256 * MIB, cmdline=CMDLINE, initrd=initrd, decompress=True
    )
    memory = written(plan, 256 * MIB)
    info = 0x6000
    assert memory.u32(info + 0) == 0x336EC578  # magic
    assert memory.u32(info + 4) == 1  # version
    assert memory.u32(info + 8) == 0  # flags
    assert memory.u32(info + 12) == 1  # nr_modules
    modlist = memory.u64(info + 16)
    assert memory.u64(info + 24) == 0x20000  # cmdline_paddr
    assert memory.u64(info + 32) == 0  # rsdp_paddr
    memmap = memory.u64(info + 40)
    entries = memory.u32(info + 48)
    assert memory.u32(info + 52) == 0
    region = plan.region("initrd")
    assert (memory.u64(modlist), memory.u64(modlist + 8)) == (region.start, len(initrd))
    assert memory.u64(modlist + 16) == 0 and memory.u64(modlist + 24) == 0
    assert entries == len(plan.e820)
    for i, entry in enumerate(plan.e820):
        at = memmap + 24 * i
        got = (memory.u64(at), memory.u64(at + 8), memory.u32(at + 16), memory.u32(at + 20))
        assert got == (entry.addr, entry.size, entry.type, 0)


# --- e820 ---------------------------------------------------------------------


def _check_map(memory_size: int) -> list[tuple[int, int, E820Type]]:
    entries = build_e820(memory_size)
    spans = [(e.addr, e.end, e.type) for e in entries]
    assert spans == sorted(spans)
    for (_, end, _), (start, _, _) in pairwise(spans):
        assert end <= start
    ram = [(s, e) for s, e, t in spans if t == E820Type.RAM]
    for start, end in ram:
        assert end <= 0xA0000 or start >= 0x100000  # legacy hole
        assert end <= 3 * GIB or start >= 4 * GIB  # MMIO hole
    legacy_loss = 0x100000 - 0x9FC00
    assert sum(e - s for s, e in ram) == memory_size - legacy_loss
    return spans


def test_e820_256m() -> None:
    assert _check_map(256 * MIB) == [
        (0, 0x9FC00, E820Type.RAM),
        (0x9FC00, 0xA0000, E820Type.RESERVED),
        (0xE0000, 0x100000, E820Type.RESERVED),
        (0x100000, 256 * MIB, E820Type.RAM),
    ]


def test_e820_4g_splits_around_the_mmio_hole() -> None:
    spans = _check_map(4 * GIB)
    assert spans[-2:] == [(0x100000, 3 * GIB, E820Type.RAM), (4 * GIB, 5 * GIB, E820Type.RAM)]


def test_e820_5g() -> None:
    assert _check_map(5 * GIB)[-1] == (4 * GIB, 6 * GIB, E820Type.RAM)


def test_e820_packing_is_20_bytes_per_entry() -> None:
    entries = build_e820(256 * MIB)
    packed = pack_e820(entries)
    assert len(packed) == 20 * len(entries)
    assert struct.unpack_from("<QQI", packed, 20) == (0x9FC00, 0x400, 2)


def test_e820_without_bios_area() -> None:
    spans = [(e.addr, e.type) for e in build_e820(64 * MIB, bios_area=False)]
    assert (0xE0000, E820Type.RESERVED) not in spans


def test_e820_refuses_a_vm_without_ram_above_1m() -> None:
    with pytest.raises(GuestMemoryTooSmallError, match="at least 2 MiB"):
        build_e820(MIB)


def test_layout_agrees_with_the_core() -> None:
    core = pytest.importorskip("pyfastvm._core")
    assert core.MMIO_HOLE_START == layout.MMIO_HOLE_START
    assert core.MMIO_HOLE_END == layout.MMIO_HOLE_END


# --- damaged and foreign files ------------------------------------------------


def test_truncated_kernel(kernel: bytes) -> None:
    with pytest.raises(KernelFormatError, match="truncated"):
        load_kernel(kernel[: len(kernel) // 2], memory_size=128 * MIB, cmdline=CMDLINE)
    with pytest.raises(KernelFormatError, match="too short"):
        load_kernel(kernel[:0x250], memory_size=128 * MIB, cmdline=CMDLINE)
    with pytest.raises(KernelFormatError, match="too short to be a kernel"):
        load_kernel(kernel[:0x100], memory_size=128 * MIB, cmdline=CMDLINE)


def test_bad_magic(kernel: bytes) -> None:
    damaged = bytearray(kernel)
    damaged[0x202:0x206] = b"HdrX"
    with pytest.raises(KernelFormatError, match=r"no bzImage 'HdrS' magic at 0x202"):
        load_kernel(bytes(damaged), memory_size=128 * MIB, cmdline=CMDLINE)


def test_bad_boot_flag(kernel: bytes) -> None:
    damaged = bytearray(kernel)
    damaged[0x1FE:0x200] = b"\0\0"
    with pytest.raises(KernelFormatError, match="boot_flag"):
        load_kernel(bytes(damaged), memory_size=128 * MIB, cmdline=CMDLINE)


def test_text_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a kernel\n" * 100)
    with pytest.raises(KernelFormatError) as caught:
        load_kernel(text, memory_size=128 * MIB, cmdline=CMDLINE)
    assert str(text) in str(caught.value)
    assert "b'this is not a ke'" in str(caught.value)


def test_gzipped_kernel_gets_a_hint() -> None:
    with pytest.raises(KernelFormatError, match="gzip-compressed: decompress it first"):
        load_kernel(gzip.compress(b"x" * 4096), memory_size=128 * MIB, cmdline=CMDLINE)


def _with_version(kernel: bytes, version: int) -> bytes:
    patched = bytearray(kernel)
    struct.pack_into("<H", patched, 0x206, version)
    return bytes(patched)


def test_protocol_too_old(kernel: bytes) -> None:
    with pytest.raises(KernelFormatError, match=r"protocol 2\.04; pyfastvm needs 2\.06"):
        load_kernel(_with_version(kernel, 0x0204), memory_size=128 * MIB, cmdline=CMDLINE)


def test_protocol_without_64bit_entry(kernel: bytes) -> None:
    with pytest.raises(KernelFormatError, match=r"2\.10 .*needs protocol 2\.12\+"):
        load_kernel(_with_version(kernel, 0x020A), memory_size=128 * MIB, cmdline=CMDLINE)


def test_damaged_payload(kernel: bytes, header: SetupHeader) -> None:
    damaged = bytearray(kernel)
    middle = header.setup_size + header.payload_offset + header.payload_length // 2
    damaged[middle : middle + 4096] = bytes(4096)
    with pytest.raises(KernelFormatError, match="payload"):
        load_kernel(bytes(damaged), memory_size=128 * MIB, cmdline=CMDLINE, decompress=True)


def test_unsupported_payload_format(kernel: bytes, header: SetupHeader) -> None:
    damaged = bytearray(kernel)
    start = header.setup_size + header.payload_offset
    damaged[start : start + 4] = b"\x89LZO"
    with pytest.raises(KernelFormatError, match="lzo-compressed"):
        load_kernel(bytes(damaged), memory_size=128 * MIB, cmdline=CMDLINE, decompress=True)


def test_program_is_not_a_kernel() -> None:
    ls = Path("/bin/ls")
    if not ls.exists():
        pytest.skip("no /bin/ls")
    with pytest.raises(KernelFormatError, match="ET_DYN"):
        load_kernel(ls, memory_size=128 * MIB, cmdline=CMDLINE)


# --- crafted ELF files ----------------------------------------------------------


def make_elf(
    *,
    machine: int = 62,
    elf_class: int = 2,
    segments: tuple[tuple[int, int, bytes, int], ...] = ((0x1000000, 0x1000000, b"\x90", 1),),
    entry: int = 0x1000000,
    note: bytes = b"",
) -> bytes:
    """An ELF64 executable; segments are (vaddr, paddr, data, memsz)."""
    phnum = len(segments) + (1 if note else 0)
    offset = 64 + 56 * phnum
    phdrs, body = b"", b""
    for vaddr, paddr, data, memsz in segments:
        phdrs += struct.pack(
            "<IIQQQQQQ", 1, 5, offset + len(body), vaddr, paddr, len(data), memsz, 0x1000
        )
        body += data
    if note:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, offset + len(body), 0, 0, len(note), len(note), 4)
        body += note
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH", ident, 2, machine, 1, entry, 64, 0, 0, 64, 56, phnum, 64, 0, 0
    )
    return ehdr + phdrs + body


def xen_note(note_type: int, desc: bytes) -> bytes:
    return struct.pack("<III", 4, len(desc), note_type) + b"Xen\0" + desc


def test_elf_of_the_wrong_machine() -> None:
    with pytest.raises(KernelFormatError, match=r"machine 3 \(EM_386\), not x86-64"):
        load_kernel(make_elf(machine=3), memory_size=128 * MIB, cmdline=CMDLINE)


def test_elf_32_bit_class() -> None:
    with pytest.raises(KernelFormatError, match="ELFCLASS64"):
        load_kernel(make_elf(elf_class=1), memory_size=128 * MIB, cmdline=CMDLINE)


def test_elf_truncated() -> None:
    elf = make_elf(segments=((0x1000000, 0x1000000, b"\x90" * 4096, 4096),))
    with pytest.raises(KernelFormatError, match="truncated"):
        load_kernel(elf[:-100], memory_size=128 * MIB, cmdline=CMDLINE)


def test_elf_virtual_entry_is_translated_and_bss_zeroed() -> None:
    vbase = 0xFFFF_FFFF_8100_0000
    code = b"\xf4" * 0x100
    elf = make_elf(segments=((vbase, 0x200_0000, code, 0x3000),), entry=vbase + 0x10)
    plan = load_kernel(elf, memory_size=64 * MIB, cmdline=CMDLINE)
    assert plan.entry_64 == 0x200_0010
    assert plan.pvh_entry is None and plan.start_info_addr is None
    memory = written(plan, 64 * MIB, fill=0xAA)
    assert memory.ram[0x200_0000:0x200_0100] == code
    assert memory.ram[0x200_0100:0x200_3000] == bytes(0x2F00)
    assert memory.ram[0x200_3000] == 0xAA
    assert memory.u16(plan.zero_page_addr + 0x1FE) == 0xAA55
    assert memory.u8(plan.zero_page_addr + 0x210) == 0xFF


@pytest.mark.parametrize("desc", [struct.pack("<I", 0x1000040), struct.pack("<Q", 0x1000040)])
def test_elf_pvh_note(desc: bytes) -> None:
    note = xen_note(6, b"linux\0\0\0") + xen_note(18, desc)
    plan = load_kernel(make_elf(note=note), memory_size=64 * MIB, cmdline=CMDLINE)
    assert plan.pvh_entry == 0x1000040
    assert plan.start_info_addr == 0x6000


def test_elf_entry_outside_segments() -> None:
    with pytest.raises(KernelFormatError, match="entry point"):
        load_kernel(make_elf(entry=0x5000000), memory_size=64 * MIB, cmdline=CMDLINE)


def test_elf_segment_below_1m() -> None:
    elf = make_elf(segments=((0x8000, 0x8000, b"\x90", 1),), entry=0x8000)
    with pytest.raises(KernelFormatError, match="below 1 MiB"):
        load_kernel(elf, memory_size=64 * MIB, cmdline=CMDLINE)


def test_elf_larger_than_memory() -> None:
    elf = make_elf(segments=((0x1000000, 0x1000000, b"\x90", 40 * MIB),))
    with pytest.raises(GuestMemoryTooSmallError, match="the VM has 32 MiB"):
        load_kernel(elf, memory_size=32 * MIB, cmdline=CMDLINE)


# --- crafted bzImages: every payload format --------------------------------------


def make_bzimage(payload: bytes, *, version: int = 0x020F) -> bytes:
    """A bzImage with 4 setup sectors whose protected-mode code is the payload."""
    setup = bytearray(5 * 512)
    code = payload + bytes(-len(payload) % 16)
    struct.pack_into("<BHI", setup, 0x1F1, 4, 0, len(code) // 16)
    struct.pack_into("<HH4sH", setup, 0x1FE, 0xAA55, 0x6AEB, b"HdrS", version)
    setup[0x211] = LOADED_HIGH
    struct.pack_into("<IIBBHI", setup, 0x22C, 0x7FFF_FFFF, 0x20_0000, 1, 21, 0x3, 2047)
    struct.pack_into("<II", setup, 0x248, 0, len(payload))
    struct.pack_into("<QI", setup, 0x258, 0x100_0000, 0x40_0000)
    return bytes(setup) + code


def _lz4_legacy(data: bytes) -> bytes:
    import lz4.block  # type: ignore[import-untyped]

    out = b"\x02\x21\x4c\x18"
    for at in range(0, len(data), 8 * MIB):
        block = lz4.block.compress(data[at : at + 8 * MIB], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out


COMPRESSORS = {
    "gzip": gzip.compress,
    "xz": lambda data: lzma.compress(
        data,
        format=lzma.FORMAT_XZ,
        check=lzma.CHECK_CRC32,
        filters=[{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2}],
    ),
    "zstd": lambda data: zstandard.ZstdCompressor(level=19).compress(data),
    "bzip2": bz2.compress,
    "lzma": lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE),
    "lz4": _lz4_legacy,
}


@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_every_payload_format_decompresses(fmt: str) -> None:
    elf = make_elf(segments=((0x1000000, 0x1000000, os.urandom(1000) * 20, 20000),))
    payload = COMPRESSORS[fmt](elf) + struct.pack("<I", len(elf))
    image = make_bzimage(payload)
    assert decompress_bzimage(image, parse_setup_header(image, fmt), fmt) == elf
    plan = load_kernel(image, memory_size=64 * MIB, cmdline=CMDLINE, decompress=True)
    assert plan.kind == "ELF" and plan.entry_64 == 0x1000000


def test_wrong_recorded_size_is_caught() -> None:
    elf = make_elf()
    image = make_bzimage(gzip.compress(elf) + struct.pack("<I", len(elf) + 1))
    with pytest.raises(KernelFormatError, match="recorded"):
        decompress_bzimage(image, parse_setup_header(image, "x"), "x")


def test_crafted_bzimage_footprint_is_aligned_up_from_1m() -> None:
    image = make_bzimage(gzip.compress(make_elf()) + b"\0\0\0\0")
    plan = load_kernel(image, memory_size=64 * MIB, cmdline=CMDLINE)
    footprint = plan.region("kernel runtime (init_size)")
    assert (footprint.start, footprint.size) == (0x100_0000, 0x40_0000)
    assert ram_needed_for(image) == 0x140_0000


def ram_needed_for(image: bytes) -> int:
    from pyfastvm.boot.bzimage import load_bzimage

    header = parse_setup_header(image, "x")
    return ram_needed(load_bzimage(image, header, "x"), 0)


# --- plan mechanics -------------------------------------------------------------


def test_segment_zero_fill_is_written_in_chunks() -> None:
    memory = FakeGuestMemory(8 * MIB, fill=0xFF)
    Segment(0x1000, b"abc", "test", zero_fill=3 * MIB).write_to(memory)
    assert memory.ram[0x1000:0x1003] == b"abc"
    assert memory.ram[0x1003 : 0x1003 + 3 * MIB] == bytes(3 * MIB)
    assert memory.ram[0x1003 + 3 * MIB] == 0xFF


def test_overlapping_segments_are_refused() -> None:
    with pytest.raises(BootError, match="overlaps"):
        BootPlan(
            kind="test",
            segments=(Segment(0x1000, bytes(0x100), "a"), Segment(0x1080, b"x", "b")),
            entry_64=0,
            zero_page_addr=0x7000,
            pvh_entry=None,
            start_info_addr=None,
            regions=(),
            e820=(),
        )


def test_fake_memory_is_a_guest_memory_writer() -> None:
    assert isinstance(FakeGuestMemory(4096), GuestMemoryWriter)
