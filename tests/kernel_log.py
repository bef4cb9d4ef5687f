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
