"""Per-exit cost of the vCPU loop, beside its floors, measured in one run.

Every case runs the same guest loop (guest_loops.py) in batches of BATCH
exits: PIO and MMIO to the built-in Rust sink and to a Python device, CPUID
(answered inside KVM, the in-kernel floor), and the same PIO and MMIO loops
under a bare kvm-ioctls loop with no Python and no bus (the userspace floor,
benches/exit-floor). Both guest privilege levels are measured: on KVM-on-PVM
hosts an exit from CPL 3 costs about three times one from CPL 0.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import FloorStarter, Recorder
from guest_loops import (
    CODE_ADDRESS,
    COUNT_ADDRESS,
    CPUID_LOOP,
    DONE_PORT,
    MMIO_LOOP,
    MMIO_SINK,
    PIO_LOOP,
    SINK_PORT,
)
from pytest_benchmark.fixture import BenchmarkFixture

import pyfastvm
from pyfastvm.devices import DebugExit, Sink
from pyfastvm.x86.long_mode import enter_long_mode

BATCH = 1000
ROUNDS = 30
MODES = ["cpl0", "cpl3"]


class PythonSink(pyfastvm.Device):
    """The cheapest Python device: the cost measured is the crossing itself."""

    def read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        pass


def guest(mode: str, code: bytes, sink: object) -> pyfastvm.Vcpu:
    """A VM running `code` in 64-bit mode with `sink` on the PIO and MMIO sink addresses."""
    vm = pyfastvm.Vm(16 << 20)
    vm.add_pio_device(SINK_PORT, 1, sink)
    vm.add_mmio_device(MMIO_SINK, 0x1000, sink)
    vm.add_pio_device(DONE_PORT, 1, DebugExit())
    vm.memory.write(COUNT_ADDRESS, BATCH.to_bytes(4, "little"))
    vm.memory.write(CODE_ADDRESS, code)
    vcpu = vm.create_vcpu(0)
    enter_long_mode(vcpu, vm.memory, user=mode == "cpl3")
    regs = vcpu.get_regs()
    regs.rip, regs.rsp = CODE_ADDRESS, 0x80000
    vcpu.set_regs(regs)
    return vcpu


def measure(benchmark: BenchmarkFixture, batch: Callable[[], object]) -> float | None:
    """Times `batch` over ROUNDS rounds; the median batch time in seconds."""
    benchmark.pedantic(batch, rounds=ROUNDS, warmup_rounds=1)
    return benchmark.stats.stats.median if benchmark.stats else None


CASES = {
    "pio_rust_sink": (PIO_LOOP, Sink),
    "pio_python_device": (PIO_LOOP, PythonSink),
    "mmio_rust_sink": (MMIO_LOOP, Sink),
    "mmio_python_device": (MMIO_LOOP, PythonSink),
    "cpuid_in_kernel": (CPUID_LOOP, Sink),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_pyfastvm_exit(
    benchmark: BenchmarkFixture, record_per_exit: Recorder, mode: str, case: str
) -> None:
    code, sink = CASES[case]
    vcpu = guest(mode, code, sink())
    assert vcpu.run().reason == "debug_exit"  # the loop works before timing it
    median = measure(benchmark, vcpu.run)
    benchmark.extra_info["exits_per_round"] = BATCH + 1
    if median is not None:
        record_per_exit(mode, case, median, BATCH + 1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bus, code", [("pio", PIO_LOOP), ("mmio", MMIO_LOOP)], ids=["pio", "mmio"])
def test_floor_exit(
    benchmark: BenchmarkFixture,
    start_floor: FloorStarter,
    record_per_exit: Recorder,
    mode: str,
    bus: str,
    code: bytes,
) -> None:
    floor = start_floor(mode, code)
    if measure(benchmark, lambda: floor.batch(BATCH)) is not None:
        # The floor's own clock, without the pipe round trip: the stricter floor.
        own = floor.median_batch_seconds()
        benchmark.extra_info["floor_own_ns_per_exit"] = own * 1e9 / (BATCH + 1)
        record_per_exit(mode, f"{bus}_floor_rust_loop", own, BATCH + 1)
