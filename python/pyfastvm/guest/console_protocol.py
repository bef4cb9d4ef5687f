"""Host side of the guest's report on the serial console.

The guest init (see :mod:`pyfastvm.guest.init_script`) writes its report
as lines on the console, mixed with whatever the kernel prints::

    @@PYFASTVM <nonce> <seq> <length> <crc32> <body>

``body`` is ``BEGIN``, ``DATA <base64>`` or ``EXIT <status>``; ``seq``
counts frames from 0 (BEGIN), ``length`` is the length of ``body`` and
``crc32`` (8 hex digits) is zlib's CRC-32 of ``body``.  A line that does not
decode as such a frame is console log.

The kernel's console printing is not synchronized with user-space writes
to the same UART, so a kernel message can land in the middle of a frame:
the frame line is cut after some prefix A, the kernel text K follows with
its own line end, and the rest B of the frame arrives as the next line.
Such a split is repaired by trying ``A + B`` for every split point of the
broken line, and the CRC says which one is right.  Anything that cannot be
repaired shows up as a gap in ``seq`` and raises :class:`ConsoleFrameError`.
"""

from __future__ import annotations

import base64
import codecs
import re
import secrets
import zlib
from dataclasses import dataclass
from typing import NoReturn

from pyfastvm.guest.errors import ConsoleFrameError, ConsoleProtocolError

MARKER = "@@PYFASTVM"
# What a serving guest prints once it waits for its command (init_script).
READY = "@@PYFASTVM-READY"
DATA_LINE_CHARS = 128
NONCE_PATTERN = re.compile(r"[0-9a-f]{8,64}")
PANIC_TEXT = "Kernel panic - not syncing: "
INIT_MILESTONE = "Run /init as init process"
MAX_PENDING_LINES = 16

_FRAME = re.compile(
    rf"{MARKER} (?P<nonce>[0-9a-f]+) (?P<seq>\d+) (?P<length>\d+) (?P<crc>[0-9a-f]{{8}}) "
    r"(?P<body>.*)",
    re.DOTALL,
)
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_STATUS = re.compile(r"\d{1,3}")

QUIET_HINT = (
    "add 'quiet' (or 'loglevel=1') to the kernel command line so the kernel "
    "does not print to the console while the guest reports"
)


@dataclass(frozen=True)
class Frame:
    """One decoded report line: ``kind`` is BEGIN, DATA or EXIT."""

    seq: int
    kind: str
    argument: str


def new_nonce() -> str:
    """A fresh random nonce that tags one run's frames."""
    return secrets.token_hex(8)


def check_nonce(nonce: str) -> str:
    """Return ``nonce`` if it is 8-64 lowercase hex digits, else raise ValueError."""
    if not NONCE_PATTERN.fullmatch(nonce):
        raise ValueError(f"nonce must be 8-64 lowercase hex digits, got {nonce!r}")
    return nonce


def encode_frame(nonce: str, seq: int, body: str) -> str:
    """The report line for ``body`` (without line end), as the guest writes it."""
    crc = zlib.crc32(body.encode("ascii"))
    return f"{MARKER} {nonce} {seq} {len(body)} {crc:08x} {body}"


def decode_frame(line: str, nonce: str) -> Frame | None:
    """Decode a report line of this run; ``None`` if it is not an intact frame."""
    match = _FRAME.fullmatch(line)
    if match is None or match["nonce"] != nonce:
        return None
    body = match["body"]
    raw = body.encode("utf-8", "surrogateescape")
    if len(body) != int(match["length"]) or zlib.crc32(raw) != int(match["crc"], 16):
        return None
    return _parse_body(int(match["seq"]), body)


def _parse_body(seq: int, body: str) -> Frame:
    kind, _, argument = body.partition(" ")
    valid = (
        (kind == "BEGIN" and argument == "")
        or (kind == "DATA" and len(argument) % 4 == 0 and _BASE64.fullmatch(argument) is not None)
        or (kind == "EXIT" and _STATUS.fullmatch(argument) is not None)
    )
    if not valid:
        raise ConsoleProtocolError(
            f"the guest sent an intact but unknown report frame {body[:80]!r}; the "
            "initramfs was built by an incompatible pyfastvm version, rebuild it"
        )
    return Frame(seq, kind, argument)


@dataclass
class _Pending:
    """A log line that starts like a frame: maybe a frame cut by kernel output."""

    slot: int
    text: str


class ConsoleProtocol:
    """Incremental parser of a guest's console stream for one run.

    Feed it everything the UART produces, in chunks of any size, with
    :meth:`feed`, and call :meth:`close` at end of stream.

    Attributes: ``finished`` (the exit status arrived: stop the VM),
    ``exit_code``, ``stdout`` (the command's stdout and stderr, as bytes),
    ``kernel_log`` (all other console lines), ``panic`` (the text after
    "Kernel panic - not syncing: ", else None), ``init_started`` (the kernel
    printed "Run /init as init process"; not printed with ``quiet``) and
    ``command_started`` (the guest init sent BEGIN).  A guest that could not
    end the VM may panic ("Attempted to kill init") after its report, so
    check ``finished`` before ``panic``.
    """

    def __init__(self, nonce: str) -> None:
        self.nonce = check_nonce(nonce)
        self.exit_code: int | None = None
        self.panic: str | None = None
        self.init_started = False
        self.command_started = False
        self._lines = _LineSplitter()
        self._log: list[str | None] = []
        self._pending: list[_Pending] = []
        self._next_seq = 0
        self._output = bytearray()
        self._error: ConsoleProtocolError | None = None

    @property
    def finished(self) -> bool:
        """True once the guest reported the command's exit status."""
        return self.exit_code is not None

    @property
    def stdout(self) -> bytes:
        """The command's combined stdout and stderr received so far."""
        return bytes(self._output)

    @property
    def kernel_log(self) -> str:
        """Every console line that was not part of the report."""
        lines = [line for line in self._log if line is not None]
        return "".join(f"{line}\n" for line in lines)

    def feed(self, chunk: bytes | str) -> None:
        """Process console output; raises ConsoleFrameError on a lost frame."""
        self._raise_if_failed()
        for line in self._lines.push(chunk):
            self._handle_line(line)

    def close(self) -> None:
        """Process a final line that had no line end."""
        self._raise_if_failed()
        for line in self._lines.flush():
            self._handle_line(line)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _handle_line(self, line: str) -> None:
        frame = decode_frame(line, self.nonce) or self._frame_after_junk(line)
        if frame is not None:
            self._accept(frame)
        elif not self._rejoin(line):
            self._log_line(line)

    def _frame_after_junk(self, line: str) -> Frame | None:
        """A frame glued to unterminated earlier output (firmware, escape codes)."""
        at = line.find(MARKER, 1)
        frame = decode_frame(line[at:], self.nonce) if at > 0 else None
        if frame is not None:
            self._log_line(line[:at])
        return frame

    def _log_line(self, line: str) -> None:
        if not line:
            return
        self._log.append(line)
        self._watch_milestones(line)
        if line.startswith(MARKER[0]):
            self._pending.append(_Pending(len(self._log) - 1, line))
            del self._pending[:-MAX_PENDING_LINES]

    def _watch_milestones(self, line: str) -> None:
        if INIT_MILESTONE in line:
            self.init_started = True
        at = line.find(PANIC_TEXT)
        if at >= 0 and self.panic is None:
            self.panic = line[at + len(PANIC_TEXT) :].strip()

    def _rejoin(self, continuation: str) -> bool:
        """Repair a frame split by kernel output, with ``continuation`` as its end."""
        for pending in reversed(self._pending):
            for cut in range(len(pending.text), 0, -1):
                frame = decode_frame(pending.text[:cut] + continuation, self.nonce)
                if frame is not None:
                    self._pending.remove(pending)
                    self._log[pending.slot] = pending.text[cut:].strip("\r") or None
                    self._accept(frame)
                    return True
        return False

    def _accept(self, frame: Frame) -> None:
        if self.finished:
            return
        if frame.seq != self._next_seq:
            self._fail_lost(frame.seq)
        self._next_seq += 1
        self._pending.clear()
        if frame.kind == "BEGIN":
            self.command_started = True
        elif frame.kind == "DATA":
            self._output += base64.b64decode(frame.argument)
        else:
            self.exit_code = int(frame.argument)

    def _fail_lost(self, seq: int) -> NoReturn:
        suspects = "; ".join(repr(p.text[:100]) for p in self._pending) or "none"
        self._error = ConsoleFrameError(
            f"expected report frame {self._next_seq} from the guest but got frame "
            f"{seq} (nonce {self.nonce}): frames were lost or corrupted on the serial "
            "console, most likely because kernel messages were printed into them and "
            f"could not be separated again (unrepaired lines: {suspects}). "
            f"Fix: {QUIET_HINT}."
        )
        raise self._error


class _LineSplitter:
    """Turns arbitrary chunks into complete lines without their ``\\r\\n``."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []

    def push(self, chunk: bytes | str) -> list[str]:
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        if "\n" not in text:
            self._partial.append(text)
            return []
        head, *middle, tail = text.split("\n")
        first = "".join([*self._partial, head])
        self._partial = [tail]
        return [line.rstrip("\r") for line in (first, *middle)]

    def flush(self) -> list[str]:
        rest = "".join([*self._partial, self._decoder.decode(b"", final=True)])
        self._partial = []
        return [rest.rstrip("\r")] if rest.rstrip("\r") else []
