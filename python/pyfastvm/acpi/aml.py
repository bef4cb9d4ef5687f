"""The few ACPI Machine Language encodings pyfastvm's DSDT needs (ACPI 6.5,
chapter 20 "ACPI Machine Language Specification", and 6.4 "Resource Data
Types for ACPI"). Each function returns the encoded bytes of one term."""

from __future__ import annotations

import struct

NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
STRING_PREFIX = 0x0D
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0E
ZERO_OP, ONE_OP = 0x00, 0x01
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR, DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x5C, 0x2E, 0x2F

# Small resource descriptors (6.4.2): tag byte = type << 3 | length.
IO_PORT_DESCRIPTOR = 0x47  # type 8, 7 bytes
IRQ_DESCRIPTOR = 0x22  # type 4, 2 bytes: edge-triggered, active-high, exclusive
END_TAG = 0x79  # type 15, 1 byte
IO_DECODE_16 = 0x01
# Large resource descriptors (6.4.3): tag byte, then a 16-bit body length.
MEMORY32_FIXED_DESCRIPTOR = 0x86
MEMORY_READ_WRITE = 0x01
EXTENDED_INTERRUPT_DESCRIPTOR = 0x89
INTERRUPT_CONSUMER, INTERRUPT_EDGE, INTERRUPT_ACTIVE_LOW, INTERRUPT_SHARED = 0x01, 0x02, 0x04, 0x08


def pkg_length(body_length: int) -> bytes:
    """PkgLength (20.2.4): the encoded length counts its own bytes."""
    for extra in range(4):
        total = body_length + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            rest = (total >> 4).to_bytes(extra, "little")
            return bytes([extra << 6 | total & 0xF]) + rest
    raise ValueError(f"an AML package of {body_length} bytes is too long")


def name_segment(segment: str) -> bytes:
    """A NameSeg: four characters, padded with '_'."""
    if not 1 <= len(segment) <= 4 or not segment.replace("_", "A").isalnum():
        raise ValueError(f"not an ACPI name segment: {segment!r}")
    return segment.upper().ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    r"""A NameString such as ``_S5``, ``\_SB`` or ``\_SB.COM1``."""
    root = path.startswith("\\")
    segments = [name_segment(s) for s in path.lstrip("\\").split(".")]
    if len(segments) == 1:
        encoded = segments[0]
    elif len(segments) == 2:
        encoded = bytes([DUAL_NAME_PREFIX]) + b"".join(segments)
    else:
        encoded = bytes([MULTI_NAME_PREFIX, len(segments)]) + b"".join(segments)
    return (b"\\" if root else b"") + encoded


def integer(value: int) -> bytes:
    """The shortest ComputationalData encoding of an unsigned integer."""
    if value in (0, 1):
        return bytes([ONE_OP if value else ZERO_OP])
    for prefix, fmt in ((BYTE_PREFIX, "<B"), (WORD_PREFIX, "<H"), (DWORD_PREFIX, "<I")):
        if value < 1 << (8 * struct.calcsize(fmt)):
            return bytes([prefix]) + struct.pack(fmt, value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\0"


def eisa_id(text: str) -> bytes:
    """EISAID("PNP0501"): three letters of five bits and a 16-bit product number
    (19.6.36), as a DWord."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"not an EISA id: {text!r}")
    vendor = sum((ord(c) - 0x40) << shift for c, shift in zip(text[:3], (10, 5, 0), strict=True))
    compressed = vendor.to_bytes(2, "big") + int(text[3:], 16).to_bytes(2, "big")
    return integer(int.from_bytes(compressed, "little"))


def name(path: str, value: bytes) -> bytes:
    """Name(path, value): binds an encoded data object to a name."""
    return bytes([NAME_OP]) + name_string(path) + value


def package(*elements: bytes) -> bytes:
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


def io_port(base: int, length: int) -> bytes:
    """IO(Decode16, base, base, 1, length): a fixed range of I/O ports (6.4.2.5)."""
    return struct.pack("<BBHHBB", IO_PORT_DESCRIPTOR, IO_DECODE_16, base, base, 1, length)


def irq(line: int) -> bytes:
    """IRQNoFlags(){line}: an ISA interrupt, edge-triggered, active high (6.4.2.1)."""
    return struct.pack("<BH", IRQ_DESCRIPTOR, 1 << line)


def memory32_fixed(base: int, length: int, *, writable: bool = True) -> bytes:
    """Memory32Fixed(ReadWrite, base, length): a fixed MMIO range (6.4.3.4)."""
    info = MEMORY_READ_WRITE if writable else 0
    return struct.pack("<BHBII", MEMORY32_FIXED_DESCRIPTOR, 9, info, base, length)


def extended_interrupt(
    gsi: int, *, edge: bool = True, active_low: bool = False, shared: bool = False
) -> bytes:
    """Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive){gsi}: one
    interrupt by its GSI, with its trigger and polarity (6.4.3.6)."""
    flags = INTERRUPT_CONSUMER
    flags |= INTERRUPT_EDGE if edge else 0
    flags |= INTERRUPT_ACTIVE_LOW if active_low else 0
    flags |= INTERRUPT_SHARED if shared else 0
    return struct.pack("<BHBBI", EXTENDED_INTERRUPT_DESCRIPTOR, 6, flags, 1, gsi)


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate(){...}: the descriptors and an end tag whose checksum
    byte 0 means "treat as correct" (6.4.2.9)."""
    return buffer(b"".join(descriptors) + bytes([END_TAG, 0]))
