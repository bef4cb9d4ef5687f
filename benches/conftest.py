"""Fixtures of the exit-latency benchmarks, and a summary of per-exit costs
and their ratios to the floors, all measured in one run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import exit_floor
import pytest
from guest_loops import COUNT_ADDRESS

# Per-exit medians in nanoseconds, by (mode, case), filled in by the benchmarks.
PER_EXIT_NS: dict[tuple[str, str], float] = {}
# Seconds from start to the kernel's "Run /init", by (VMM, boot), one run each.
BOOT_TO_INIT: dict[tuple[str, str], float] = {}
# Figures printed in the summary, each beside its floor or peer in the same
# words: by section title, then by name.
FIGURES: dict[str, dict[str, str]] = {}
VIRTIO_FIGURES = FIGURES.setdefault("virtio figures, each beside its floor", {})
SNAPSHOT_FIGURES = FIGURES.setdefault("Snapshots beside cold boots (medians)", {})

Recorder = Callable[[str, str, float, int], None]
BootRecorder = Callable[[str, str, float], None]
FloorStarter = Callable[[str, bytes], exit_floor.ExitFloor]


@pytest.fixture
def record_per_exit() -> Recorder:
    def record(mode: str, case: str, batch_seconds: float, exits_per_batch: int) -> None:
        PER_EXIT_NS[(mode, case)] = batch_seconds * 1e9 / exits_per_batch

    return record


@pytest.fixture
def record_boot() -> BootRecorder:
    def record(vmm: str, boot: str, seconds: float) -> None:
        BOOT_TO_INIT[(vmm, boot)] = seconds

    return record


@pytest.fixture(scope="session")
def floor_binary() -> Path:
    return exit_floor.build()


@pytest.fixture
def start_floor(floor_binary: Path) -> Iterator[FloorStarter]:
    started: list[exit_floor.ExitFloor] = []

    def start(mode: str, code: bytes) -> exit_floor.ExitFloor:
        started.append(exit_floor.ExitFloor(floor_binary, mode, code, COUNT_ADDRESS))
        return started[-1]

    yield start
    for floor in started:
        floor.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    _boot_summary(terminalreporter.write_line)
    _exit_summary(terminalreporter.write_line)
    _figures_summary(terminalreporter.write_line)


def _boot_summary(write: Callable[[str], None]) -> None:
    """pyfastvm beside QEMU's microvm: a ratio of two boots on the same host
    in one run means something where their absolute times do not."""
    boots = sorted({boot for vmm, boot in BOOT_TO_INIT if vmm == "qemu"})
    if not boots:
        return
    write("\nBoot to init, pyfastvm / QEMU microvm (same kernel, initramfs, command line):")
    for boot in boots:
        ours, qemu = BOOT_TO_INIT.get(("pyfastvm", boot)), BOOT_TO_INIT[("qemu", boot)]
        if ours is not None:
            write(f"  {boot:16} {ours:7.2f} s / {qemu:7.2f} s = {ours / qemu:.2f}")


def _figures_summary(write: Callable[[str], None]) -> None:
    for title, figures in FIGURES.items():
        if figures:
            write(f"\n{title}:")
            for name, figure in figures.items():
                write(f"  {name}: {figure}")


def _exit_summary(write: Callable[[str], None]) -> None:
    if not PER_EXIT_NS:
        return
    write("\nPer-exit cost (median of the batch medians):")
    for (mode, case), ns in sorted(PER_EXIT_NS.items()):
        write(f"  {mode:5} {case:24} {ns:9.0f} ns")
    for mode in sorted({mode for mode, _ in PER_EXIT_NS}):
        for bus in ("pio", "mmio"):
            floor = PER_EXIT_NS.get((mode, f"{bus}_floor_rust_loop"))
            rust = PER_EXIT_NS.get((mode, f"{bus}_rust_sink"))
            python = PER_EXIT_NS.get((mode, f"{bus}_python_device"))
            if floor and rust and python:
                write(
                    f"  {mode:5} {bus:4}: Rust sink {rust / floor:.3f}x the floor; "
                    f"Python device = floor + {(python - floor) / 1000:.2f} us"
                )
