"""The hardware-KVM lane: a command, typically the test suite, run inside a
QEMU guest whose CPU QEMU's TCG emulates with AMD-V and nested paging, so
that the guest's /dev/kvm is KVM on SVM, as on our users' hosts, on any
Linux machine::

    python3 -m pyfastvm.testing.hwkvm -- python3 -m pytest -m hwkvm

The guest sees the host's whole file system (read-only, with a tmpfs
overlay for writes), so the checkout, its installed package and the
guest-image cache are used as they are. It has no network: the images
pyfastvm's tests boot are fetched on the host first. It is a functional
check: everything runs 10 to 30 times slower than on the host.
"""

from .errors import (
    GuestKvmMissingError,
    LaneError,
    LaneStalledError,
    LaneTimeoutError,
    QemuMissingError,
)
from .lane import run_in_lane

__all__ = [
    "GuestKvmMissingError",
    "LaneError",
    "LaneStalledError",
    "LaneTimeoutError",
    "QemuMissingError",
    "run_in_lane",
]
