"""The `pyfastvm` command: `pyfastvm run [options] -- COMMAND ...`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from ._core import VmmError
from .config import Disk, Vsock
from .microvm import ConsoleSink
from .progress import BootProgress
from .runner import DEFAULT_TIMEOUT, RunResult, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyfastvm", description=__doc__)
    commands = parser.add_subparsers(dest="action", required=True)
    boot = commands.add_parser("run", help="boot a micro-VM and run COMMAND in it")
    boot.add_argument(
        "--kernel",
        help="bzImage or ELF vmlinux (default: Debian's cloud kernel; on KVM-on-PVM hosts "
        "pyfastvm's minimal kernel, built once)",
    )
    boot.add_argument("--initrd", help="an initrd whose files the guest also gets")
    boot.add_argument("--memory", default="256M", help="guest RAM, e.g. 512M (default 256M)")
    boot.add_argument("--vcpus", type=int, default=1, help="number of vCPUs (default 1)")
    boot.add_argument("--cmdline", default="", help="extra kernel command line arguments")
    boot.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds")
    boot.add_argument("--console", action="store_true", help="show the guest console on stderr")
    boot.add_argument(
        "--disk",
        action="append",
        default=[],
        type=Disk.parse,
        metavar="PATH[,ro]",
        help="a raw disk image as a virtio disk (/dev/vda, /dev/vdb, ... in order); ,ro "
        "attaches it read-only; with --cmdline root=/dev/vda the command runs in it",
    )
    boot.add_argument(
        "--vsock",
        metavar="PATH",
        help="a virtio-vsock device (guest CID 3): host programs connect to the Unix "
        "socket PATH and send 'CONNECT <port>\\n'; guest connections to host port P reach "
        "PATH_P",
    )
    boot.add_argument("--rng", action="store_true", help="a virtio entropy device (/dev/hwrng)")
    boot.add_argument(
        "--snapshot",
        action="store_true",
        help="boot once and keep the ready guest as a snapshot in the cache; later runs with "
        "the same kernel, initrd, command line, memory and vCPUs restore it instead of booting "
        "(no virtio devices)",
    )
    boot.add_argument("command", nargs="+", help="the command to run in the guest")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = _run_showing_progress(args)
    except VmmError as error:
        print(f"pyfastvm: {error}", file=sys.stderr)
        return 125
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    return result.exit_code


def _run_showing_progress(args: argparse.Namespace) -> RunResult:
    """Runs the command; on a terminal (and without --console) a progress
    line shows the boot's elapsed time and latest kernel line."""
    console: ConsoleSink = sys.stderr.buffer if args.console else None
    with contextlib.ExitStack() as stack:
        if console is None and sys.stderr.isatty():
            console = stack.enter_context(BootProgress(sys.stderr)).feed
        return run(
            args.command,
            kernel=args.kernel,
            initrd=args.initrd,
            memory=args.memory,
            vcpus=args.vcpus,
            cmdline=args.cmdline,
            timeout=args.timeout,
            console=console,
            disks=args.disk,
            vsock=Vsock(args.vsock) if args.vsock is not None else None,
            rng=args.rng,
            snapshot=args.snapshot,
        )


if __name__ == "__main__":
    sys.exit(main())
