"""Snapshots beside cold boots, in one run (the minimal kernel, 256 MiB, 1 vCPU):

- time: a cold boot to the ready guest (the init that waits for its
  command), a restore of it from disk and a clone of it from a template,
  each until the vCPU threads run (the VMM's part), beside the floor of
  any restore (the KVM ioctls that create a VM with its in-kernel devices
  and a vCPU), and `run(["true"])` end to end through the ready snapshot
  beside one that boots;
- memory: the resident and proportional set sizes (RSS, PSS) of this
  process for 10 idle clones beside 10 cold-booted guests, and beside one;
  the clones' figures also count all of the template's RAM (a memfd the
  clones map privately).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import SNAPSHOT_FIGURES as FIGURES
from pytest_benchmark.fixture import BenchmarkFixture

import pyfastvm
from pyfastvm.guest.console_protocol import READY
from pyfastvm.guest.initramfs import build_serving_initramfs
from pyfastvm.guest.minimal_kernel import minimal_kernel
from pyfastvm.ready_snapshots import snapshot_path
from pyfastvm.snapshot import Snapshot

BOOT_TIMEOUT = 1200.0
GUESTS = 10
ROUNDS = 10


def cold_boot() -> pyfastvm.MicroVM:
    config = pyfastvm.VMConfig(kernel=minimal_kernel())
    machine = pyfastvm.MicroVM(config, initrd_overlay=build_serving_initramfs()).start()
    machine.wait_for(READY, BOOT_TIMEOUT)
    return machine


@pytest.fixture(scope="module")
def template() -> Iterator[Snapshot]:
    with cold_boot().freeze() as frozen:
        yield frozen


@pytest.fixture(scope="module")
def on_disk(template: Snapshot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("snapshot") / "ready"
    template.save(path)
    return path


def median_ms(benchmark: BenchmarkFixture) -> float | None:
    """The benchmark's median in milliseconds (None with --benchmark-disable)."""
    return benchmark.stats.stats.median * 1e3 if benchmark.stats else None


def record(name: str, benchmark: BenchmarkFixture, unit: str = "ms") -> None:
    median = median_ms(benchmark)
    if median is not None:
        FIGURES[name] = f"{median / 1000:.1f} s" if unit == "s" else f"{median:.2f} ms"


def timed_starts(benchmark: BenchmarkFixture, start: Callable[[], pyfastvm.MicroVM]) -> None:
    started: list[pyfastvm.MicroVM] = []

    def close_all() -> None:
        while started:
            started.pop().close()

    benchmark.pedantic(lambda: started.append(start()), setup=close_all, rounds=ROUNDS)
    close_all()


def test_cold_boot_to_ready(benchmark: BenchmarkFixture) -> None:
    benchmark.pedantic(lambda: cold_boot().close(), rounds=1)
    record("cold boot to the ready guest", benchmark, unit="s")


def test_restore_from_disk_to_running(benchmark: BenchmarkFixture, on_disk: Path) -> None:
    timed_starts(benchmark, lambda: pyfastvm.MicroVM.restore(on_disk))
    record("restore from disk to running (256 MiB)", benchmark)


def test_clone_to_running(benchmark: BenchmarkFixture, template: Snapshot) -> None:
    timed_starts(benchmark, template.clone)
    record("clone to running", benchmark)


def test_kvm_floor_of_a_restore(benchmark: BenchmarkFixture) -> None:
    """KVM_CREATE_VM with 256 MiB of RAM, the in-kernel interrupt
    controllers and PIT, and one vCPU: what every restore pays to KVM."""
    vms: list[pyfastvm.Vm] = []

    def create() -> None:
        vm = pyfastvm.Vm(256 << 20)
        vm.create_irqchip()
        vm.create_pit()
        vm.create_vcpu(0)
        vms.append(vm)

    benchmark.pedantic(create, setup=vms.clear, rounds=ROUNDS)
    record("KVM's floor of any restore (VM, irqchip, PIT, vCPU)", benchmark)


@pytest.mark.parametrize("path", ["boot", "ready snapshot"])
def test_run_true(benchmark: BenchmarkFixture, path: str) -> None:
    kernel = minimal_kernel()
    cached = snapshot_path(pyfastvm.VMConfig(kernel=kernel))
    if path == "boot":
        shutil.rmtree(cached, ignore_errors=True)  # this run boots and keeps it

    def run() -> None:
        result = pyfastvm.run(["true"], kernel=kernel, snapshot=True, timeout=BOOT_TIMEOUT)
        assert result.exit_code == 0 and result.restored == (path != "boot")

    benchmark.pedantic(run, rounds=1 if path == "boot" else ROUNDS)
    record(f"run(['true']) through the {path} path", benchmark, unit="s")


class Resident(NamedTuple):
    """Resident and proportional set sizes, in bytes."""

    rss: int
    pss: int

    @classmethod
    def now(cls) -> Resident:
        """This process's."""
        rollup = Path("/proc/self/smaps_rollup").read_text()
        return cls(*(_kib(rollup, name) << 10 for name in ("Rss", "Pss")))

    def since(self, before: Resident, plus: int = 0) -> Resident:
        return Resident(self.rss - before.rss + plus, self.pss - before.pss + plus)

    def __str__(self) -> str:
        return f"RSS {self.rss / 2**20:.1f} MiB, PSS {self.pss / 2**20:.1f} MiB"


def _kib(rollup: str, name: str) -> int:
    match = re.search(rf"^{name}:\s+(\d+) kB", rollup, re.MULTILINE)
    assert match is not None
    return int(match[1])


@pytest.mark.parametrize("how", ["cold boots", "clones"])
def test_memory_of_idle_guests(benchmark: BenchmarkFixture, template: Snapshot, how: str) -> None:
    """RSS and PSS added by one guest, then by GUESTS guests, all idle and
    ready; the clones' figures count all of the template's RAM too."""
    start = cold_boot if how == "cold boots" else template.clone
    before = Resident.now()
    guests = [start()]
    one = Resident.now().since(before)
    try:
        benchmark.pedantic(lambda: guests.extend(start() for _ in range(GUESTS - 1)), rounds=1)
        time.sleep(2)  # let them settle at the prompt
        template_ram = os.fstat(template.memory_fd).st_blocks * 512 if how == "clones" else 0
        every = Resident.now().since(before, plus=template_ram)
        benchmark.extra_info.update(
            one_mib=[round(size / 2**20, 1) for size in one],
            all_mib=[round(size / 2**20, 1) for size in every],
            template_ram_mib=round(template_ram / 2**20, 1),
            guests=len(guests),
        )
        FIGURES[f"idle {how}, one"] = str(one)
        FIGURES[f"idle {how}, {len(guests)}"] = str(every) + (
            f" (the template's {template_ram / 2**20:.1f} MiB of RAM counted in)"
            if how == "clones"
            else ""
        )
    finally:
        for guest in guests:
            guest.close()
