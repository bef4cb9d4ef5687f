"""bzImage setup header parsing and loading (Documentation/arch/x86/boot.rst)."""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass, fields

from .errors import KernelFormatError
from .layout import BZIMAGE_LOAD_ADDR, align_up
from .plan import LoadedKernel, Region, Segment

SETUP_HEADER_OFFSET = 0x1F1
SETUP_HEADER_MAX_END = 0x26C  # end of kernel_info_offset, protocol 2.15
BOOT_FLAG = 0xAA55
HDRS_MAGIC = b"HdrS"
HDRS_OFFSET = 0x202
MIN_PROTOCOL = 0x0206  # cmdline_size
MIN_PROTOCOL_64BIT = 0x020C  # xloadflags, XLF_KERNEL_64

# loadflags
LOADED_HIGH = 0x01
KASLR_FLAG = 0x02
QUIET_FLAG = 0x20
KEEP_SEGMENTS = 0x40
CAN_USE_HEAP = 0x80

# xloadflags
XLF_KERNEL_64 = 0x01
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02

# boot.rst "Sample Boot Configuration": heap_end = 0xe000, ptr = heap_end - 0x200.
HEAP_END_PTR = 0xE000 - 0x200
ENTRY_64_OFFSET = 0x200

# struct setup_header, field by field from offset 0x1F1 (boot.rst table).
_SETUP_HEADER = struct.Struct("<BHIHHHHHIHIHHBBHIIIIHBBIIIBBHIIQIIQQIII")


@dataclass(frozen=True)
class SetupHeader:
    """struct setup_header; fields past the header's end (older protocols) are 0."""

    setup_sects: int
    root_flags: int
    syssize: int
    ram_size: int
    vid_mode: int
    root_dev: int
    boot_flag: int
    jump: int
    header: int
    version: int
    realmode_swtch: int
    start_sys_seg: int
    kernel_version: int
    type_of_loader: int
    loadflags: int
    setup_move_size: int
    code32_start: int
    ramdisk_image: int
    ramdisk_size: int
    bootsect_kludge: int
    heap_end_ptr: int
    ext_loader_ver: int
    ext_loader_type: int
    cmd_line_ptr: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable_kernel: int
    min_alignment: int
    xloadflags: int
    cmdline_size: int
    hardware_subarch: int
    hardware_subarch_data: int
    payload_offset: int
    payload_length: int
    setup_data: int
    pref_address: int
    init_size: int
    handover_offset: int
    kernel_info_offset: int

    @property
    def protocol(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    @property
    def setup_size(self) -> int:
        """Bytes before the protected-mode code: boot sector plus setup_sects."""
        return ((self.setup_sects or 4) + 1) * 512

    @property
    def protected_mode_size(self) -> int:
        """syssize is in 16-byte paragraphs."""
        return self.syssize * 16

    def pack(self) -> bytes:
        return _SETUP_HEADER.pack(*astuple(self))

    def replace(self, **changes: int) -> SetupHeader:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return SetupHeader(**(values | changes))


def is_bzimage(image: bytes) -> bool:
    return image[HDRS_OFFSET : HDRS_OFFSET + 4] == HDRS_MAGIC


def parse_setup_header(image: bytes, name: str) -> SetupHeader:
    """Read and check the setup header of a bzImage."""
    if len(image) < SETUP_HEADER_MAX_END:
        raise KernelFormatError(
            f"{name} is {len(image)} bytes long: too short for a bzImage, whose setup"
            f" header alone ends at {SETUP_HEADER_MAX_END:#x}; the file is truncated"
        )
    _check_magic(image, name)
    raw = bytearray(image[SETUP_HEADER_OFFSET:SETUP_HEADER_MAX_END])
    # boot.rst: the header ends at 0x202 + the byte at 0x201 (the jump).
    end = min(0x202 + image[0x201], SETUP_HEADER_MAX_END)
    raw[end - SETUP_HEADER_OFFSET :] = bytes(SETUP_HEADER_MAX_END - end)
    header = SetupHeader(*_SETUP_HEADER.unpack(raw))
    _check_protocol(header, name)
    _check_length(header, image, name)
    return header


def _check_magic(image: bytes, name: str) -> None:
    if not is_bzimage(image):
        found = image[HDRS_OFFSET : HDRS_OFFSET + 4]
        raise KernelFormatError(f"{name} is not a bzImage: found {found!r} at 0x202, not 'HdrS'")
    boot_flag = int.from_bytes(image[0x1FE:0x200], "little")
    if boot_flag != BOOT_FLAG:
        raise KernelFormatError(
            f"{name} has 'HdrS' but boot_flag at 0x1FE is {boot_flag:#06x}, not 0xAA55:"
            " the image is damaged"
        )


def _check_protocol(header: SetupHeader, name: str) -> None:
    if header.version < MIN_PROTOCOL:
        raise KernelFormatError(
            f"{name} uses boot protocol {header.protocol}; pyfastvm needs 2.06 or newer"
            " (Linux 2.6.22+): use a newer kernel"
        )


def _check_length(header: SetupHeader, image: bytes, name: str) -> None:
    needed = header.setup_size + header.protected_mode_size
    if len(image) < needed:
        raise KernelFormatError(
            f"{name} is truncated: its setup header (setup_sects, syssize) says"
            f" {needed} bytes but the file has {len(image)}, {needed - len(image)} short"
        )


def kernel_version_string(image: bytes, header: SetupHeader) -> str:
    """The version string the header points at, or '' (boot.rst 'kernel_version')."""
    if not header.kernel_version:
        return ""
    start = header.kernel_version + 0x200
    end = image.find(b"\0", start, start + 256)
    if end < 0:
        return ""
    return image[start:end].decode("ascii", "replace")


def load_bzimage(image: bytes, header: SetupHeader, name: str) -> LoadedKernel:
    """Plan a bzImage boot through the 64-bit entry point."""
    _check_64bit_entry(header, name)
    code = image[header.setup_size : header.setup_size + header.protected_mode_size]
    release = kernel_version_string(image, header).partition(" ")[0]
    return LoadedKernel(
        kind="bzImage",
        name=f"{name} ({release})" if release else name,
        segments=(Segment(BZIMAGE_LOAD_ADDR, code, "kernel"),),
        footprint=runtime_footprint(header, BZIMAGE_LOAD_ADDR, len(code)),
        # boot.rst "64-bit BOOT PROTOCOL": entry at load address + 0x200.
        entry_64=BZIMAGE_LOAD_ADDR + ENTRY_64_OFFSET,
        pvh_entry=None,
        setup_header=loader_setup_header(header).pack(),
        cmdline_size=header.cmdline_size,
        initrd_addr_max=header.initrd_addr_max,
    )


def _check_64bit_entry(header: SetupHeader, name: str) -> None:
    if header.version < MIN_PROTOCOL_64BIT or not header.xloadflags & XLF_KERNEL_64:
        raise KernelFormatError(
            f"{name} has boot protocol {header.protocol} and xloadflags"
            f" {header.xloadflags:#x}: the 64-bit entry needs protocol 2.12+ with"
            " XLF_KERNEL_64 (an x86-64 kernel, Linux 3.8+): use such a kernel"
        )
    if not header.loadflags & LOADED_HIGH:
        raise KernelFormatError(
            f"{name} is a zImage (LOADED_HIGH clear in loadflags): build a bzImage"
        )
    alignment = header.kernel_alignment
    if header.relocatable_kernel and alignment & (alignment - 1):
        raise KernelFormatError(
            f"{name}: kernel_alignment {alignment:#x} is not a power of two:"
            " the setup header is damaged"
        )


def runtime_footprint(header: SetupHeader, load_addr: int, code_size: int) -> Region:
    """Where the kernel decompresses itself: init_size bytes from its run address.

    boot.rst 'init_size': a relocatable kernel runs at the load address aligned
    up to kernel_alignment. Linux's decompressor also never goes below
    pref_address (its LOAD_PHYSICAL_ADDR): the footprint starts at the higher.
    """
    start = load_addr
    if header.relocatable_kernel:
        start = align_up(start, max(header.kernel_alignment, 1))
    start = max(start, header.pref_address)
    size = max(header.init_size, code_size)
    return Region("kernel runtime (init_size)", start, size)


def loader_setup_header(header: SetupHeader) -> SetupHeader:
    """The header with the bzImage-specific fields a loader writes (boot.rst).

    The zero page builder writes the rest (type_of_loader, vid_mode, command
    line and initrd). Heap and code32_start only matter to the real-mode and
    32-bit entries, which pyfastvm does not use, but are set consistently.
    """
    return header.replace(
        loadflags=header.loadflags | LOADED_HIGH | CAN_USE_HEAP,
        code32_start=BZIMAGE_LOAD_ADDR,
        heap_end_ptr=HEAP_END_PTR,
    )
