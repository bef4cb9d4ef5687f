"""Guests booted once and kept ready: `pyfastvm.run(..., snapshot=True)`.

The first run of a (kernel, initrd, command line, memory, vCPUs) boots the
guest with an init that waits for its command on the console
(init_script.serving_init_script), snapshots it there into the cache
(``<cache>/snapshots/<key>/``), and goes on; every later run restores that
snapshot, which costs milliseconds instead of a boot, and sends its command.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

from ._core import __version__
from .config import VMConfig
from .guest.cache import cache_subdir, publish, staging_dir
from .guest.console_protocol import READY
from .guest.init_script import command_script
from .guest.initramfs import build_serving_initramfs
from .host import host_profile
from .microvm import ConsoleSink, MicroVM
from .snapshot import SnapshotError


def ready_machine(config: VMConfig, *, timeout: float, console: ConsoleSink) -> MicroVM:
    """A started MicroVM waiting for its command: restored from the cached
    snapshot for `config`, or booted (and snapshotted for next time)."""
    path = snapshot_path(config)
    if path.is_dir():
        try:
            return MicroVM.restore(path, console=console)
        except SnapshotError:
            shutil.rmtree(path, ignore_errors=True)  # stale or damaged: take it again
    overlay = build_serving_initramfs()
    machine = MicroVM(config, console=console, initrd_overlay=overlay).start()
    try:
        machine.wait_for(READY, timeout)
        _keep_snapshot(machine, path)
    except BaseException:
        machine.close()
        raise
    return machine


def send_command(machine: MicroVM, command: list[str], *, nonce: str) -> None:
    """Hands a ready guest its command, as the line its init waits for."""
    script = command_script(command, nonce=nonce).encode()
    machine.write_console(f"{nonce} {base64.b64encode(script).decode()}\n".encode())


def snapshot_path(config: VMConfig) -> Path:
    """Where the ready snapshot for `config` is cached: keyed by what makes
    the guest (kernel and initrd by path, size and modification time), the
    host's kind and pyfastvm's version."""
    files = {
        name: _file_identity(path)
        for name, path in (("kernel", config.kernel), ("initrd", config.initrd))
        if path is not None
    }
    key = {
        "pyfastvm": __version__,
        "host": host_profile().kind,
        "files": files,
        "cmdline": config.cmdline,
        "memory": config.memory_bytes,
        "vcpus": config.vcpus,
        "init": hashlib.sha256(build_serving_initramfs()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_subdir("snapshots") / digest


def _file_identity(path: Path) -> list[object]:
    status = path.stat()
    return [str(path.resolve()), status.st_size, status.st_mtime_ns]


def _keep_snapshot(machine: MicroVM, path: Path) -> None:
    """Snapshots the ready guest into the cache, whole or not at all: written
    beside and renamed, so a concurrent run never sees half a snapshot."""
    with staging_dir(path.parent, "snapshot") as stage:
        machine.snapshot(stage / "ready")
        publish(stage / "ready", path)  # another run's, if it was first, serves as well
