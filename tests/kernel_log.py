"""What the tests look for in a guest kernel's console log."""

from __future__ import annotations

import re

# How ACPICA and Linux flag problems in firmware tables.
ACPI_COMPLAINTS = re.compile(r"ACPI( BIOS)? (Error|Warning)|\[Firmware (Bug|Warn)\]")


def cpus_brought_up(console: str) -> int:
    """The CPU count of the kernel's "smp: Brought up 1 node, N CPUs" line."""
    match = re.search(r"smp: Brought up 1 node, (\d+) CPUs?", console)
    assert match, "the kernel did not report its SMP bring-up"
    return int(match.group(1))


# How the virtio drivers and their transport report a device they cannot use.
VIRTIO_ERRORS = re.compile(r"virtio.*(fail|error)|probe of .*virtio.* failed", re.IGNORECASE)


def virtio_disks(console: str) -> dict[str, int]:
    """Each disk virtio_blk announced (``virtio_blk virtio0: [vda] 32768
    512-byte logical blocks ...``), with its size in sectors."""
    found = re.findall(
        r"virtio_blk virtio\d+: \[(vd[a-z]+)\] (\d+) 512-byte logical blocks", console
    )
    return {name: int(sectors) for name, sectors in found}
