"""Host-side decompression of a bzImage payload into the ELF vmlinux.

boot.rst 'payload_offset'/'payload_length': the compressed vmlinux sits at
payload_offset from the start of the protected-mode code; its format is
told by its magic. The kernel build appends the uncompressed size as a
little-endian u32 to every payload (mkpiggy reads it), which is checked.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable

import lz4.block
import zstandard

from .bzimage import SetupHeader
from .errors import KernelFormatError

ELF_MAGIC = b"\x7fELF"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LZ4_LEGACY_BLOCK_SIZE = 8 << 20  # LZ4 legacy frames: blocks of at most 8 MiB
_U32 = struct.Struct("<I")
_DECOMPRESSION_ERRORS = (
    zlib.error,
    lzma.LZMAError,
    OSError,  # bz2
    EOFError,
    lz4.block.LZ4BlockError,
    zstandard.ZstdError,
)

Decompressor = Callable[[bytes], bytes]


def _gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data)


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _unlzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)


def _bunzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


def _unzstd(data: bytes) -> bytes:
    decompressor = zstandard.ZstdDecompressor(max_window_size=1 << 31)
    return decompressor.decompressobj().decompress(data)


def _unlz4_legacy(data: bytes) -> bytes:
    """LZ4 legacy frame: the magic, then blocks of [u32 compressed size][data]."""
    out, pos = [], len(LZ4_LEGACY_MAGIC)
    while pos + _U32.size <= len(data):
        (size,) = _U32.unpack_from(data, pos)
        if data[pos : pos + 4] == LZ4_LEGACY_MAGIC:
            pos += 4  # a concatenated legacy stream starts
            continue
        if pos + 4 + size > len(data):
            break  # the size the kernel build appended, not a block
        block = data[pos + 4 : pos + 4 + size]
        out.append(lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK_SIZE))
        pos += 4 + size
    return b"".join(out)


# (magic, format name, decompressor or None when unsupported)
FORMATS: tuple[tuple[bytes, str, Decompressor | None], ...] = (
    (b"\x1f\x8b", "gzip", _gunzip),
    (b"\xfd7zXZ\x00", "xz", _unxz),
    (b"\x28\xb5\x2f\xfd", "zstd", _unzstd),
    (LZ4_LEGACY_MAGIC, "lz4 (legacy frame)", _unlz4_legacy),
    (b"BZh", "bzip2", _bunzip2),
    (b"\x5d\x00\x00", "lzma", _unlzma),
    (b"\x89LZO", "lzo", None),
)


def detect_format(data: bytes) -> tuple[str, Decompressor | None] | None:
    """The compression format of data by its magic, or None."""
    for magic, name, decompress in FORMATS:
        if data.startswith(magic):
            return name, decompress
    return None


def payload(image: bytes, header: SetupHeader, name: str) -> bytes:
    """The compressed vmlinux inside a bzImage."""
    if header.version < 0x0208 or not header.payload_length:
        raise KernelFormatError(
            f"{name} has boot protocol {header.protocol} without payload_offset/length"
            " (needs 2.08+): it cannot be decompressed on the host; boot it as a bzImage"
        )
    start = header.setup_size + header.payload_offset
    end = start + header.payload_length
    if header.payload_length < 8:
        raise KernelFormatError(
            f"{name}: payload_length is {header.payload_length}, too short for a"
            " compressed kernel: the setup header is damaged"
        )
    if end > len(image):
        raise KernelFormatError(
            f"{name} is truncated: its payload ends at {end:#x} but the file has"
            f" {len(image):#x} bytes"
        )
    return image[start:end]


def decompress_bzimage(image: bytes, header: SetupHeader, name: str) -> bytes:
    """The ELF vmlinux inside a bzImage, decompressed on the host."""
    data = payload(image, header, name)
    fmt_name, decompress = _format_of(data, name)
    try:
        vmlinux = decompress(data)
    except _DECOMPRESSION_ERRORS as error:
        raise KernelFormatError(
            f"{name}: the {fmt_name} payload is damaged ({error}); use an intact kernel file"
        ) from error
    _check_output(vmlinux, data, fmt_name, name)
    return vmlinux


def _format_of(data: bytes, name: str) -> tuple[str, Decompressor]:
    found = detect_format(data)
    if found is None:
        raise KernelFormatError(
            f"{name}: unknown payload compression (starts with {data[:6].hex()});"
            f" supported: {_supported()}; boot it without decompress=True"
        )
    fmt_name, decompress = found
    if decompress is None:
        raise KernelFormatError(
            f"{name}: the payload is {fmt_name}-compressed, which pyfastvm cannot"
            f" decompress (supported: {_supported()}); boot it without decompress=True"
        )
    return fmt_name, decompress


def _supported() -> str:
    return ", ".join(fmt for _, fmt, decompress in FORMATS if decompress is not None)


def _check_output(vmlinux: bytes, data: bytes, fmt_name: str, name: str) -> None:
    (expected,) = _U32.unpack_from(data, len(data) - 4)
    if len(vmlinux) != expected:
        raise KernelFormatError(
            f"{name}: the {fmt_name} payload decompressed to {len(vmlinux)} bytes but"
            f" the kernel build recorded {expected}: the payload is damaged or truncated"
        )
    if not vmlinux.startswith(ELF_MAGIC):
        raise KernelFormatError(
            f"{name}: the decompressed payload is not an ELF file (starts with {vmlinux[:8]!r})"
        )
