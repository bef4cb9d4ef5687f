"""Running one command in the lane: fetch what the guest cannot (it has no
network), build the initramfs, boot QEMU, stream its console, and return the
command's exit status or say why there is none."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ...guest.debian import busybox_static, debian_kernel
from ...guest.kernel_modules import debian_kernel_modules
from ...guest.minimal_kernel import minimal_kernel
from ...guest.virtio_setup import DEVICE_MODULES, module_names
from . import qemu
from .errors import GuestKvmMissingError, LaneError
from .image import (
    FAILURE_FILE,
    NO_KVM_FILE,
    STATUS_FILE,
    LaneCommand,
    lane_initramfs,
    lane_kernel,
)
from .qemu import DEFAULT_SILENCE, Console, GuestSpec, Limits, find_qemu, run_qemu

DEFAULT_TIMEOUT = 3600.0


def run_in_lane(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    silence: float = DEFAULT_SILENCE,
    memory: str = "2G",
    prefetch: bool = True,
    sink: Callable[[bytes], object] | None = None,
) -> int:
    """Runs ``argv`` in the lane's guest, in the current directory with the
    current environment, and returns its exit status. The guest's console
    goes to ``sink`` (default: stdout) as it arrives. The guest is killed
    after ``timeout`` seconds, or after ``silence`` seconds without output
    (LaneStalledError then shows where its CPU was)."""
    qemu = find_qemu()
    if prefetch:
        prefetch_guest_images()
    command = LaneCommand(argv, os.getcwd(), guest_environment(os.environ))
    with tempfile.TemporaryDirectory(prefix="pyfastvm-hwkvm-") as scratch:
        results = Path(scratch, "results")
        results.mkdir()
        initrd = Path(scratch, "initramfs.cpio")
        initrd.write_bytes(lane_initramfs(command))
        kernel = lane_kernel(Path(scratch, "vmlinux"))
        guest = GuestSpec(kernel, initrd, results, Path(scratch, "monitor.sock"), memory)
        console = Console(sink or _write_stdout)
        _progress(f"booting the lane's guest (QEMU TCG, {guest.memory}) for: {' '.join(argv)}")
        started = time.monotonic()
        qemu_status = run_qemu(guest.argv(qemu), console, Limits(timeout, silence), guest.monitor)
        status = _command_status(results, console, qemu_status)
    _progress(
        f"/dev/kvm was ready after {console.kvm_ready_after or 0:.1f} s; the command "
        f"exited with status {status} after {time.monotonic() - started:.0f} s in all"
    )
    return status


def prefetch_guest_images() -> None:
    """The guest images pyfastvm's tests boot, fetched or built on the host,
    with the stock kernel's virtio modules (a boot with every kind of virtio
    device loads them all)."""
    debian_kernel()
    debian_kernel_modules(module_names(DEVICE_MODULES))
    busybox_static()
    minimal_kernel()


def guest_environment(host: Mapping[str, str]) -> dict[str, str]:
    """The host's environment, with this Python's directory first on PATH:
    ``python3`` in the guest is then this interpreter, not a version
    manager's shim (each of which costs seconds in the emulated guest)."""
    python_dir = str(Path(sys.executable).parent)
    return {**host, "PATH": os.pathsep.join([python_dir, host.get("PATH", "")])}


def _command_status(results: Path, console: Console, qemu_status: int) -> int:
    status_file = results / STATUS_FILE
    if status_file.is_file():
        return int(status_file.read_text())
    no_kvm = results / NO_KVM_FILE
    if no_kvm.is_file():
        lines = no_kvm.read_text(errors="replace").strip()
        raise GuestKvmMissingError(
            "the lane's guest has no /dev/kvm: kvm-amd did not load, so the CPU that "
            f"QEMU emulates ({qemu.CPU}) offers no usable SVM; the lane is tested with "
            "QEMU 10.0 (Debian's bookworm-backports). The guest kernel said:\n"
            + (lines or "(nothing about KVM or SVM)"),
            kernel_lines=lines,
        )
    failure = results / FAILURE_FILE
    what = failure.read_text().strip() if failure.is_file() else "it did not report"
    raise LaneError(
        f"the lane's guest ended (QEMU exit status {qemu_status}) before the command "
        f"finished: {what}. Last console lines:\n{console.last_lines()}"
    )


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _progress(message: str) -> None:
    print(f"pyfastvm-hwkvm: {message}", file=sys.stderr, flush=True)
