"""virtio beside its floors, measured in one run.

- The transport, from a tiny guest (every host): a QueueNotify that KVM
  completes through the ioeventfd, the rng device's thread filling the
  buffer, the guest seeing the used ring move; beside the same loop doing an
  MMIO write to the Rust sink instead (one exit to the VMM and back, the
  floor of any device that answers on the vCPU thread).
- Linux user space (one boot of this host's default kernel): virtio-blk
  sequential reads (1 MiB) and 4 KiB reads at queue depth 1, with O_DIRECT,
  beside the host reading the same image file; vsock throughput and round
  trip beside the serial console's throughput.

A summary at the end prints each figure beside its floor.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import VIRTIO_FIGURES as FIGURES
from pytest_benchmark.fixture import BenchmarkFixture

import pyfastvm
from pyfastvm.devices import DebugExit, Sink, VirtioRng
from pyfastvm.guest.cpio import CpioEntry, write_cpio
from pyfastvm.testing import virtio_driver as virtio
from pyfastvm.testing.mmio_script import MmioScript, script_vcpu
from pyfastvm.testing.vsock_program import vsock_stream_program

ITERATIONS = 200
ROUNDS = 10
QUEUE = virtio.SplitQueue(base=0x100000, size=256)
BUFFER = 0x200000
SINK_BASE = 0xD000_0000


def notification_vm(floor: bool) -> pyfastvm.Vcpu:
    """ITERATIONS rounds of: make a buffer available, notify, wait for it
    to be used; or, for the floor, an MMIO write to the Rust sink."""
    vm = pyfastvm.Vm(16 << 20)
    vm.create_irqchip()
    vm.add_pio_device(0xF4, 1, DebugExit())
    vm.add_mmio_device(SINK_BASE, 0x1000, Sink())
    info = vm.add_mmio_device(None, VirtioRng.WINDOW, VirtioRng(), gsi=vm.allocate_gsi())
    QUEUE.chain(vm.memory, 0, [(BUFFER, 16, True)])
    QUEUE.offer(vm.memory, [0] * QUEUE.size)
    script = MmioScript()
    virtio.set_up(script, info.base, QUEUE)
    for n in range(1, ITERATIONS + 1):
        script.write(QUEUE.avail, n << 16)  # flags 0, idx n
        if floor:
            script.write(SINK_BASE, n)
        else:
            script.write(info.base + virtio.QUEUE_NOTIFY, 0)
            script.wait16(QUEUE.used_idx, n)
    return script_vcpu(vm, script)


@pytest.mark.parametrize("case", ["virtio_notify_to_used", "mmio_exit_floor"])
def test_transport_notification_to_completion(benchmark: BenchmarkFixture, case: str) -> None:
    def setup() -> tuple[tuple[pyfastvm.Vcpu], dict[str, object]]:
        return (notification_vm(case == "mmio_exit_floor"),), {}

    benchmark.pedantic(lambda vcpu: vcpu.run(), setup=setup, rounds=ROUNDS)
    if benchmark.stats:
        per = benchmark.stats.stats.median / ITERATIONS * 1e6
        FIGURES[f"tiny guest: {case}"] = f"{per:.1f} us per request (incl. set-up, /{ITERATIONS})"


DISK_MIB = 64
PING_COUNT = 200
STREAM_MIB = 16
# Each timed step prints "LABEL BYTES START END", its times from /proc/uptime
# (busybox's dd prints no rate).
LINUX_SCRIPT = f"""
timed() {{
    label=$1 bytes=$2; shift 2
    start=$(cut -d' ' -f1 /proc/uptime); "$@" 2>/dev/null; end=$(cut -d' ' -f1 /proc/uptime)
    echo "$label $bytes $start $end"
}}
timed seq {DISK_MIB << 20} dd if=/dev/vda of=/dev/null bs=1M iflag=direct
timed 4k {4096 * 4096} dd if=/dev/vda of=/dev/null bs=4096 count=4096 skip=1024 iflag=direct
timed console {32 * 1024} dd if=/dev/zero of=/dev/ttyS0 bs=1024 count=32
/pyfastvm-bench/echo &
head -c {STREAM_MIB << 20} /dev/zero | /pyfastvm-bench/send > /dev/null
wait
"""


def host_reads(path: Path, block: int, count: int, offsets: list[int]) -> float:
    """Seconds for the host to read `count` blocks of `block` bytes at `offsets`."""
    with path.open("rb", buffering=0) as image:
        start = time.perf_counter()
        for offset in offsets[:count]:
            image.seek(offset)
            image.read(block)
        return time.perf_counter() - start


def rate(output: str, label: str) -> tuple[int, float]:
    """Bytes and seconds of the step `label` of LINUX_SCRIPT."""
    match = re.search(rf"^{label} (\d+) ([\d.]+) ([\d.]+)$", output, re.MULTILINE)
    assert match is not None, f"no timing for {label!r} in:\n{output}"
    return int(match[1]), float(match[3]) - float(match[2])


def test_linux_blk_and_vsock_beside_their_floors(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(random.Random(1).randbytes(DISK_MIB << 20))
    programs = tmp_path / "programs.cpio"
    programs.write_bytes(
        write_cpio(
            [
                CpioEntry.directory("pyfastvm-bench"),
                CpioEntry.file("pyfastvm-bench/echo", vsock_stream_program("listen", 7000), 0o755),
                CpioEntry.file("pyfastvm-bench/send", vsock_stream_program("connect", 7001), 0o755),
            ]
        )
    )
    sock = tmp_path / "v.sock"
    stream: dict[str, float] = {}
    pings: list[float] = []
    threads = [
        threading.Thread(target=receive_stream, args=(sock, stream), daemon=True),
        threading.Thread(target=ping, args=(sock, pings), daemon=True),
    ]
    for thread in threads:
        thread.start()
    result = pyfastvm.run(
        ["sh", "-c", LINUX_SCRIPT],
        initrd=programs,
        disks=[pyfastvm.Disk(image, read_only=True)],
        vsock=pyfastvm.Vsock(sock),
        timeout=1800,
    )
    for thread in threads:
        thread.join(timeout=60)
    output = result.stdout.decode()
    seq_bytes, seq_seconds = rate(output, "seq")
    small_bytes, small_seconds = rate(output, "4k")
    console_bytes, console_seconds = rate(output, "console")
    offsets = [n * 4096 for n in random.Random(2).sample(range(DISK_MIB * 256), 4096)]
    host_seq = host_reads(image, 1 << 20, DISK_MIB, [n << 20 for n in range(DISK_MIB)])
    host_small = host_reads(image, 4096, 4096, offsets)
    FIGURES["blk sequential read"] = (
        f"{seq_bytes / seq_seconds / 1e6:.1f} MB/s; host reading the file "
        f"{(DISK_MIB << 20) / host_seq / 1e6:.0f} MB/s"
    )
    FIGURES["blk 4 KiB reads, QD1"] = (
        f"{small_bytes / 4096 / small_seconds:.0f} IOPS; host random 4 KiB reads "
        f"{4096 / host_small:.0f} IOPS"
    )
    if stream.get("seconds"):
        FIGURES["vsock guest->host"] = (
            f"{stream['bytes'] / stream['seconds'] / 1e6:.1f} MB/s; serial console "
            f"{console_bytes / console_seconds / 1e3:.1f} kB/s"
        )
    if pings:
        pings.sort()
        FIGURES["vsock round trip (1 byte)"] = f"{pings[len(pings) // 2] * 1e6:.0f} us median"
    assert result.exit_code == 0, result.stdout


def receive_stream(sock: Path, out: dict[str, float]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(f"{sock}_7001")
        server.listen(1)
        server.settimeout(1800)
        connection, _ = server.accept()
        with connection:
            total, start = 0, time.perf_counter()
            while chunk := connection.recv(1 << 16):
                total += len(chunk)
            out["seconds"], out["bytes"] = time.perf_counter() - start, total


def ping(sock: Path, out: list[float]) -> None:
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            try:
                connection.connect(str(sock))
                connection.sendall(b"CONNECT 7000\n")
                answer = connection.makefile("rb").readline()
            except OSError:
                answer = b""
            if answer.startswith(b"OK "):
                for _ in range(PING_COUNT):
                    start = time.perf_counter()
                    connection.sendall(b"p")
                    connection.recv(1)
                    out.append(time.perf_counter() - start)
                connection.shutdown(socket.SHUT_WR)
                connection.recv(1)
                return
        time.sleep(0.5)
