"""QEMU with TCG emulating an AMD CPU with SVM and nested paging, so that the
guest's KVM is KVM on SVM; its serial console streamed as it comes."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LaneStalledError, LaneTimeoutError, QemuMissingError
from .image import HOST_ROOT_TAG, KVM_READY, RESULTS_TAG
from .monitor import ask, monitor_option

QEMU = "qemu-system-x86_64"
INSTALL_QEMU = "apt-get install -t bookworm-backports qemu-system-x86"
# The QEMU the lane is tested with; with bookworm's 7.2 a lane run also once
# stalled with QEMU busy, which the wake-up below does not explain.
RELIABLE_QEMU = (10, 0)
# An AMD CPU with SVM, nested paging and virtual GIF, less the features
# QEMU 10's TCG does not implement (NRIPS among them), which it would warn about.
TCG_LACKS = ("fxsr-opt", "misalignsse", "osvw", "topoext", "nrip-save", "xsavec")
CPU = ",".join(["EPYC", "+svm", "+npt", "+vgif", *(f"-{feature}" for feature in TCG_LACKS)])
KERNEL_ARGS = "console=ttyS0 quiet panic=-1"
TAIL_BYTES = 16 << 10
READ_CHUNK = 1 << 16
STALL_LINES = 80
# Longer than any single test or benchmark in the lane stays quiet.
DEFAULT_SILENCE = 600.0
NMI_REPLY_SECONDS = 20.0
WAKE_SECONDS = 1.0


def find_qemu() -> str:
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise QemuMissingError(
            f"{QEMU} is not on PATH: the hardware-KVM lane runs its guest in QEMU "
            f"(install it with '{INSTALL_QEMU}')"
        )
    version = qemu_version(qemu)
    if version < RELIABLE_QEMU:
        print(
            f"pyfastvm-hwkvm: warning: the lane is tested with QEMU 10; with QEMU "
            f"{'.'.join(map(str, version))} its guest stalled in some runs ({INSTALL_QEMU})",
            file=sys.stderr,
        )
    return qemu


def qemu_version(qemu: str) -> tuple[int, int]:
    """(major, minor) from ``qemu-system-x86_64 --version``."""
    banner = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"version (\d+)\.(\d+)", banner)
    return (int(match[1]), int(match[2])) if match else (0, 0)


@dataclass(frozen=True)
class Limits:
    """How long the lane's guest may run in all, and print nothing."""

    timeout: float
    silence: float = DEFAULT_SILENCE


@dataclass(frozen=True)
class GuestSpec:
    """The lane guest's files and size; ``results`` is the writable share,
    ``monitor`` the socket of QEMU's monitor."""

    kernel: Path
    initrd: Path
    results: Path
    monitor: Path
    memory: str = "2G"

    def argv(self, qemu: str) -> list[str]:
        return [
            qemu, "-accel", "tcg", "-cpu", CPU, "-m", self.memory, "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "stdio", "-monitor", monitor_option(self.monitor),
            "-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", KERNEL_ARGS,
            "-virtfs", _share("/", HOST_ROOT_TAG, readonly=True),
            "-virtfs", _share(str(self.results), RESULTS_TAG, readonly=False),
        ]  # fmt: skip


def _share(path: str, tag: str, *, readonly: bool) -> str:
    # multidevs=remap: the host's root spans several file systems.
    options = f"local,path={path},mount_tag={tag},security_model=none,multidevs=remap"
    return options + (",readonly=on" if readonly else "")


@dataclass
class Console:
    """What the guest printed: streamed to ``sink``, the tail kept for errors,
    and when /dev/kvm appeared (seconds after QEMU started)."""

    sink: Callable[[bytes], object]
    tail: bytearray = field(default_factory=bytearray)
    kvm_ready_after: float | None = None
    _pending_cr: bool = False

    def feed(self, data: bytes, elapsed: float) -> None:
        data = self._without_carriage_returns(data)
        self.sink(data)
        self.tail += data
        del self.tail[:-TAIL_BYTES]
        if self.kvm_ready_after is None and KVM_READY.encode() in self.tail:
            self.kvm_ready_after = elapsed

    def _without_carriage_returns(self, data: bytes) -> bytes:
        """The serial line ends lines with CR LF; a CR at a chunk's end waits
        for the next chunk to tell."""
        if self._pending_cr:
            data = b"\r" + data
        self._pending_cr = data.endswith(b"\r")
        if self._pending_cr:
            data = data[:-1]
        return data.replace(b"\r\n", b"\n")

    def last_lines(self, count: int = 25) -> str:
        lines = self.tail.decode(errors="replace").splitlines()[-count:]
        return "\n".join(f"  | {line}" for line in lines)


def run_qemu(argv: list[str], console: Console, limits: Limits, monitor: Path) -> int:
    """Runs QEMU until it exits, streaming its output to ``console``; returns
    its exit status. Past ``limits.timeout`` seconds, or when the guest has
    printed nothing for ``limits.silence`` seconds, QEMU is killed; a silent
    guest is asked first, through the ``monitor`` socket, where it is."""
    started = time.monotonic()
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as qemu:
        try:
            return _supervise(qemu, console, started, limits, monitor)
        finally:
            qemu.kill()  # on every way out, Ctrl-C included; Popen's exit then reaps it


def _supervise(
    qemu: subprocess.Popen[bytes], console: Console, started: float, limits: Limits, monitor: Path
) -> int:
    """QEMU's exit status once it ends, or the error that says why it was stopped."""
    deadline = started + limits.timeout
    if not _stream(qemu, console, started, limits.silence, deadline):
        return qemu.wait()
    if time.monotonic() >= deadline:
        raise LaneTimeoutError(
            f"the lane's guest was still running after {limits.timeout:.0f} s; killed "
            f"QEMU. Last console lines:\n{console.last_lines()}"
        )
    report = _where_it_stalled(qemu, console, started, monitor)
    raise LaneStalledError(
        f"the lane's guest printed nothing for {limits.silence:.0f} s; killed QEMU. "
        f"{report}\nLast console lines (an NMI asked its kernel for a backtrace):\n"
        f"{console.last_lines(STALL_LINES)}"
    )


def _stream(
    qemu: subprocess.Popen[bytes], console: Console, started: float, silence: float, deadline: float
) -> bool:
    """Feeds what QEMU prints to ``console`` until QEMU closes its output
    (False), or prints nothing for ``silence`` seconds, or ``deadline``
    passes (True). While the guest is quiet, a byte on its serial line every
    ``WAKE_SECONDS`` makes sure it is not asleep on a lost interrupt."""
    assert qemu.stdout is not None
    fd = qemu.stdout.fileno()
    quiet_until = min(time.monotonic() + silence, deadline)
    while (now := time.monotonic()) < quiet_until:
        ready, _, _ = select.select([fd], [], [], min(WAKE_SECONDS, quiet_until - now))
        if not ready:
            _wake(qemu)
            continue
        data = os.read(fd, READ_CHUNK)
        if not data:
            return False
        console.feed(data, time.monotonic() - started)
        quiet_until = min(time.monotonic() + silence, deadline)
    return True


def _wake(qemu: subprocess.Popen[bytes]) -> None:
    """A newline on the guest's serial line: the UART's interrupt wakes a
    CPU that QEMU's TCG left halted with its own timer interrupt pending in
    the local APIC (seen with QEMU 7.2 and 10.0: IRR held the timer vector,
    IF was set, the CPU stayed in HLT until an NMI came). The lane's init
    turns the console's echo off, and nothing reads the line."""
    assert qemu.stdin is not None
    with contextlib.suppress(OSError):  # QEMU is ending
        qemu.stdin.write(b"\n")
        qemu.stdin.flush()


def _where_it_stalled(
    qemu: subprocess.Popen[bytes], console: Console, started: float, monitor: Path
) -> str:
    """QEMU's view of the CPU, then an NMI and what the guest prints for it."""
    registers = ask(monitor, "info registers", "info lapic")
    ask(monitor, "nmi")
    end = time.monotonic() + NMI_REPLY_SECONDS
    _stream(qemu, console, started, NMI_REPLY_SECONDS, end)
    return f"QEMU's view of the guest's CPU:\n{registers}"
