"""The lane guest's kernel and initramfs.

The kernel is Debian's generic one: its modules include kvm-amd and the 9p
file system (the cloud kernel has no 9p). The initramfs's init loads those
modules, checks that /dev/kvm appeared, mounts the host's root (shared
read-only over 9p) under a tmpfs overlay with fresh /proc, /sys, /dev and a
tmpfs TMPDIR, runs the command there in the host's working directory with
the host's environment, and writes its exit status to the writable results
share before powering off.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...boot.bzimage import parse_setup_header
from ...boot.decompress import decompress_bzimage
from ...guest.cpio import CpioEntry, write_cpio
from ...guest.debian import busybox_static, debian_kernel
from ...guest.init_script import ENV_NAME, command_line
from ...guest.initramfs import DIRECTORIES, busybox_root, load_static_busybox
from ...guest.kernel_modules import debian_kernel_modules

KERNEL_PACKAGE = "linux-image-amd64"
# kvm-amd pulls in kvm, irqbypass and ccp; virtio_pci carries the 9p shares.
MODULES = ("kvm-amd", "virtio_pci", "9pnet_virtio", "9p", "overlay")
HOST_ROOT_TAG = "hostroot"
RESULTS_TAG = "results"
NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=262144"
# Python's start-up reads many files through the host's root: a large msize,
# and a guest-side cache (about 20% faster), as the files hold still.
HOST_ROOT_OPTIONS = f"{NINEP_OPTIONS},cache=loose,ro"
GUEST_TMPDIR = "/tmp/pyfastvm-hwkvm"
KVM_READY = "pyfastvm-hwkvm: /dev/kvm is ready"
STATUS_FILE = "exit-status"
NO_KVM_FILE = "no-kvm"
FAILURE_FILE = "lane-failure"
LANE_DIRECTORIES = (*DIRECTORIES, ("modules", 0o755), ("results", 0o755),
                    ("lower", 0o755), ("rw", 0o755), ("newroot", 0o755))  # fmt: skip
# Exit status of the shell in the new root when the working directory is gone.
NO_WORKING_DIRECTORY = 125


@dataclass(frozen=True)
class LaneCommand:
    """What to run in the guest, where, and with which environment."""

    argv: Sequence[str]
    cwd: str
    env: Mapping[str, str]


def lane_kernel(dest: Path) -> Path:
    """Debian's generic kernel as its ELF vmlinux, decompressed here into
    ``dest``: QEMU enters it through PVH, which spares the guest an xz
    decompression that takes seconds under TCG."""
    bzimage = debian_kernel(KERNEL_PACKAGE)
    image = bzimage.read_bytes()
    dest.write_bytes(
        decompress_bzimage(image, parse_setup_header(image, bzimage.name), bzimage.name)
    )
    return dest


def lane_initramfs(command: LaneCommand) -> bytes:
    """The initramfs that runs ``command``: busybox, the modules, the init."""
    modules = debian_kernel_modules(MODULES, KERNEL_PACKAGE)
    entries = busybox_root(load_static_busybox(busybox_static()), LANE_DIRECTORIES)
    entries += [CpioEntry.file(f"modules/{path.name}", path.read_bytes()) for path in modules]
    init = lane_init(command, [path.stem for path in modules])
    entries.append(CpioEntry.file("init", init.encode(), 0o755))
    return write_cpio(entries)


def lane_init(command: LaneCommand, modules: Sequence[str]) -> str:
    """The guest's /init; ``modules`` are loaded in the order given."""
    return f"""#!/bin/sh
# pyfastvm hardware-KVM lane (generated).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in {" ".join(modules)}; do
    insmod /modules/$module.ko || echo "pyfastvm-hwkvm: insmod $module failed"
done
# The console carries the command's output, not KVM's notes on MSRs it ignores.
echo N 2>/dev/null > /sys/module/kvm/parameters/report_ignored_msrs
# A lane that stalls sends an NMI: the kernel then panics with a backtrace.
echo 1 > /proc/sys/kernel/unknown_nmi_panic
# The lane writes newlines to the serial line to wake a CPU that missed an
# interrupt (pyfastvm.testing.hwkvm.qemu); they are not echoed to the console.
stty -echo < /dev/console
if ! mount -t 9p -o {NINEP_OPTIONS} {RESULTS_TAG} /results; then
    echo "pyfastvm-hwkvm: cannot mount the results share"
    poweroff -f
fi
fail() {{
    echo "$1" > /results/{FAILURE_FILE}
    poweroff -f
}}
if [ ! -c /dev/kvm ]; then
    dmesg | grep -iE 'kvm|svm' > /results/{NO_KVM_FILE}
    poweroff -f
fi
echo "{KVM_READY}"
dmesg | grep -iE 'kvm|svm'
mount -t 9p -o {HOST_ROOT_OPTIONS} {HOST_ROOT_TAG} /lower || fail "cannot mount the host's root"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
    fail "cannot mount the overlay on the host's root"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm /newroot{GUEST_TMPDIR}
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot{GUEST_TMPDIR}
ip link set lo up
chroot /newroot /bin/sh -c {shlex.quote(_in_new_root(command))} </dev/null
echo $? > /results/{STATUS_FILE}
umount /results
poweroff -f
"""


def _in_new_root(command: LaneCommand) -> str:
    """The shell line that runs the command in its directory and environment
    (variables whose names the shell cannot take are left out)."""
    env = {name: value for name, value in command.env.items() if ENV_NAME.fullmatch(name)}
    env["TMPDIR"] = GUEST_TMPDIR
    cd = f"cd {shlex.quote(command.cwd)} || exit {NO_WORKING_DIRECTORY}; "
    return cd + command_line(command.argv, env)
