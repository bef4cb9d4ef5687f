"""pyfastvm.run: boot a kernel, run one command in it, return its output and
exit code, separated from the kernel's console lines."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import Disk, VMConfig, Vsock
from .errors import GuestError, GuestPanicError, GuestTimeoutError, InvalidArgumentError
from .guest import minimal_kernel
from .guest.console_protocol import INIT_MILESTONE, ConsoleProtocol, new_nonce
from .guest.debian import busybox_static, debian_kernel
from .guest.initramfs import build_initramfs
from .guest.kernel_modules import debian_kernel_modules
from .guest.virtio_setup import (
    is_debian_kernel,
    module_names,
    setup_archive,
    setup_command,
)
from .host import host_profile
from .microvm import ConsoleSink, MicroVM, console_writer
from .ready_snapshots import ready_machine, send_command

DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class RunResult:
    """What `run` returns: the command's exit code and output, the whole
    console log, the seconds from start to the init, why the VM ended, and
    what the exit assists did."""

    exit_code: int
    stdout: bytes
    console: str
    boot_time: float
    stop_reason: str
    # What the VMM's exit assists completed for the guest, by kind (none on
    # hardware KVM; on KVM on PVM every system call, for one).
    exit_assists: dict[str, int]
    # The guest came from a ready snapshot rather than a boot (snapshot=True).
    restored: bool = False


def run(
    command: Sequence[str],
    *,
    kernel: Path | str | None = None,
    initrd: Path | str | None = None,
    memory: int | str = "256M",
    vcpus: int = 1,
    cmdline: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    console: ConsoleSink = None,
    disks: Sequence[Disk] = (),
    vsock: Vsock | None = None,
    rng: bool = False,
    snapshot: bool = False,
) -> RunResult:
    """Boots `kernel` (by default this host's: see `default_kernel`) with
    `initrd` (if given, its files come first) plus pyfastvm's busybox runner,
    runs `command` as the guest's only program and returns its result.
    `disks`, `vsock` and `rng` add virtio devices (see VMConfig); with
    ``root=/dev/vdX`` in `cmdline` the command runs in that disk's
    filesystem.

    With `snapshot`, the guest is booted once per kernel, initrd, command
    line, memory and vCPUs, kept ready as a snapshot in the cache, and every
    later run restores it in milliseconds instead of booting
    (pyfastvm.ready_snapshots). It takes no virtio devices: a ready guest
    would hold a disk's old blocks in its page cache."""
    config = VMConfig(
        kernel=Path(kernel) if kernel is not None else default_kernel(),
        initrd=Path(initrd) if initrd is not None else None,
        cmdline=cmdline,
        memory=memory,
        vcpus=vcpus,
        timeout=timeout,
        disks=list(disks),
        vsock=vsock,
        rng=rng,
    )
    nonce = new_nonce()
    protocol = ConsoleProtocol(nonce)
    user_console = console_writer(console)

    def on_console(data: bytes) -> None:
        protocol.feed(data)
        if user_console is not None:
            user_console(data)

    if snapshot:
        _check_snapshot_config(config)
        machine = ready_machine(config, timeout=timeout, console=on_console)
        send_command(machine, list(command), nonce=nonce)
    else:
        command, setup = _virtio_setup(config, command)
        overlay = build_initramfs(list(command), nonce=nonce, busybox=busybox_static())
        overlay += bytes(-len(overlay) % 4) + setup
        machine = MicroVM(config, console=on_console, initrd_overlay=overlay).start()
    with machine:
        stop_reason = _wait_for_report(machine, protocol, timeout)
        assists = machine.exit_assist_counts()
    return _result(machine, protocol, stop_reason, assists)


def default_kernel() -> Path:
    """Debian's cloud kernel on hardware KVM; on KVM on PVM, where it needs
    3 to 15 minutes to boot, the minimal test kernel (16 to 53 s, built once)."""
    if host_profile().default_kernel != "minimal":
        return debian_kernel()
    if not minimal_kernel.is_built():
        print(
            "pyfastvm: /dev/kvm here is KVM on PVM, where Debian's kernel takes minutes to "
            "boot, so pyfastvm boots its minimal kernel (or pass --kernel PATH)",
            file=sys.stderr,
            flush=True,
        )
    return minimal_kernel.minimal_kernel()


def _check_snapshot_config(config: VMConfig) -> None:
    if config.disks or config.vsock is not None or config.rng:
        raise InvalidArgumentError(
            "run(snapshot=True) takes no virtio devices (a ready guest would hold a disk's "
            "old blocks in its page cache); drop snapshot=True or the disks, vsock and rng"
        )


def _virtio_setup(config: VMConfig, command: Sequence[str]) -> tuple[Sequence[str], bytes]:
    """The command run through the virtio setup script, and the archive with
    it and the drivers a Debian kernel needs, when the VM has virtio devices
    or a root disk; else the command as it is."""
    kinds = ["VirtioBlk"] * len(config.disks)
    kinds += ["VirtioVsock"] * (config.vsock is not None) + ["VirtioRng"] * config.rng
    if not kinds:
        return command, b""
    assert config.kernel is not None
    names = module_names(kinds) if is_debian_kernel(config.kernel) else []
    modules = debian_kernel_modules(names) if names else []
    return setup_command(command), setup_archive(modules)


def _wait_for_report(machine: MicroVM, protocol: ConsoleProtocol, timeout: float) -> str:
    """Waits for the guest's report, then for it to power off by itself."""
    if machine.wait_until(lambda: protocol.finished, timeout):
        try:
            return machine.wait(host_profile().power_off_grace)
        except GuestTimeoutError:
            return "stopped"  # it reported, but did not power off
    return machine.wait(0)


def _result(
    machine: MicroVM, protocol: ConsoleProtocol, stop_reason: str, assists: dict[str, int]
) -> RunResult:
    protocol.close()
    if not protocol.finished:
        raise _no_report_error(machine, stop_reason)
    assert protocol.exit_code is not None
    return RunResult(
        exit_code=protocol.exit_code,
        stdout=protocol.stdout,
        console=machine.console,
        boot_time=machine.milestones.get(INIT_MILESTONE, 0.0),
        stop_reason=stop_reason,
        exit_assists=assists,
        restored=machine.restored,
    )


def _no_report_error(machine: MicroVM, stop_reason: str) -> GuestError:
    panic = machine.panic
    if panic is not None:
        return GuestPanicError(f"the guest kernel panicked: {panic}", panic=panic)
    return GuestError(
        f"the VM ended ({stop_reason}) before the command reported its result; "
        f"last console lines:\n{machine.console_tail()}"
    )
