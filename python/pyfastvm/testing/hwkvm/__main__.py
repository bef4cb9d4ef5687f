"""``python3 -m pyfastvm.testing.hwkvm [options] -- COMMAND ...``: runs
COMMAND in the hardware-KVM lane and exits with its exit status (125 when
the lane itself failed, with the reason on stderr).
``python3 -m pyfastvm.testing.hwkvm --fetch-only`` fetches and builds the
guest images on the host and exits (the lane's guest has no network)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..._core import VmmError
from .lane import DEFAULT_TIMEOUT, prefetch_guest_images, run_in_lane
from .qemu import DEFAULT_SILENCE

LANE_FAILED = 125


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m pyfastvm.testing.hwkvm", description=__doc__)
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds for the whole run"
    )
    parser.add_argument(
        "--silence",
        type=float,
        default=DEFAULT_SILENCE,
        help="seconds the guest may print nothing before it is stopped and asked where it is",
    )
    parser.add_argument("--memory", default="2G", help="the guest's RAM (default 2G)")
    parser.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        help="do not fetch pyfastvm's test kernels and busybox on the host first",
    )
    parser.add_argument(
        "--fetch-only",
        action="store_true",
        help="fetch and build pyfastvm's test kernels and busybox on the host, then exit",
    )
    parser.add_argument("command", nargs="*", help="the command to run in the guest")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.fetch_only and not args.command:
        parser.error("give the COMMAND to run in the lane (after --), or --fetch-only")
    try:
        if args.fetch_only:
            prefetch_guest_images()
            return 0
        return run_in_lane(
            args.command,
            timeout=args.timeout,
            silence=args.silence,
            memory=args.memory,
            prefetch=args.prefetch,
        )
    except VmmError as error:
        print(f"pyfastvm-hwkvm: {error}", file=sys.stderr)
        return LANE_FAILED


if __name__ == "__main__":
    sys.exit(main())
