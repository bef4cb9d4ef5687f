"""The guest side of pyfastvm's virtio devices for the runner: the kernel
modules a modular kernel needs for them, and ``/pyfastvm/setup``, which
loads those modules, switches to the root disk when the command line names
one (``root=/dev/vda``) and runs the command there.

Debian's cloud kernel has virtio-mmio and the device drivers as modules
(found through the DSDT once ``virtio_mmio`` is loaded); the minimal test
kernel has them built in and gets no modules. The setup script is a second
cpio archive after the runner's own, so ``/init`` stays as it is: the runner
runs ``/bin/sh /pyfastvm/setup COMMAND...`` as the command.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

from pyfastvm.guest.cache import cache_subdir
from pyfastvm.guest.cpio import CpioEntry, write_cpio

SETUP_PATH = "/pyfastvm/setup"
MODULES_DIR = "lib/modules/pyfastvm"
# What probes each device on a modular kernel; their dependencies (virtio,
# virtio_ring, vsock, ...) follow from the modules' own .modinfo.
TRANSPORT_MODULES = ("virtio_mmio",)
DEVICE_MODULES = {
    "VirtioBlk": ("virtio_blk",),
    "VirtioRng": ("virtio_rng",),
    "VirtioVsock": ("vmw_vsock_virtio_transport",),
}
# How long the root disk may take to appear after its driver is loaded.
ROOT_WAIT_SECONDS = 10


def module_names(kinds: Iterable[str]) -> list[str]:
    """The modules that drive devices of these kinds, the transport first."""
    wanted = {name for kind in kinds for name in DEVICE_MODULES.get(kind, ())}
    return [*TRANSPORT_MODULES, *sorted(wanted)] if wanted else []


def is_debian_kernel(kernel: Path) -> bool:
    """Whether `kernel` is one that pyfastvm.guest fetched from Debian (and
    so has its modules in the same package)."""
    debian = cache_subdir("debian").resolve()
    return kernel.resolve().is_relative_to(debian)


def setup_command(command: Sequence[str]) -> list[str]:
    """`command` run through the setup script."""
    return ["/bin/sh", SETUP_PATH, *command]


def setup_archive(modules: Sequence[Path]) -> bytes:
    """A cpio archive with the setup script and `modules` (.ko files, in load order)."""
    entries = [CpioEntry.directory(part) for part in ("lib", "lib/modules", MODULES_DIR)]
    entries += [
        CpioEntry.file(f"{MODULES_DIR}/{module.name}", module.read_bytes()) for module in modules
    ]
    entries.append(CpioEntry.directory("pyfastvm"))
    script = setup_script([module.name for module in modules])
    entries.append(CpioEntry.file(SETUP_PATH.lstrip("/"), script.encode(), 0o755))
    return write_cpio(entries)


def setup_script(modules: Sequence[str]) -> str:
    """``/pyfastvm/setup COMMAND...``: loads `modules` (file names in
    MODULES_DIR, in order), then runs COMMAND, in the root filesystem that
    ``root=`` names (mounted ``ro`` or ``rw`` as the command line says, with
    ``rootfstype=`` if given) when there is one, with /proc, /sys and /dev
    bound into it."""
    loads = "".join(f"insmod /{MODULES_DIR}/{shlex.quote(m)} || exit 125\n" for m in modules)
    return f"""#!/bin/sh
# pyfastvm virtio setup (generated): drivers, root disk, command.
{loads}root= mode=rw fstype=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    root=*) root=${{arg#root=}} ;;
    rootfstype=*) fstype="-t ${{arg#rootfstype=}}" ;;
    ro|rw) mode=$arg ;;
    esac
done
[ -n "$root" ] || exec "$@"
tries=0
while [ ! -b "$root" ] && [ $tries -lt {ROOT_WAIT_SECONDS} ]; do sleep 1; tries=$((tries + 1)); done
mkdir -p /newroot
mount $fstype -o $mode "$root" /newroot || {{ echo "pyfastvm: cannot mount $root" >&2; exit 125; }}
for dir in proc sys dev; do
    [ -d /newroot/$dir ] && mount --bind /$dir /newroot/$dir
done
chroot /newroot "$@"
status=$?
for dir in dev sys proc; do
    umount /newroot/$dir 2>/dev/null
done
umount /newroot
exit $status
"""
