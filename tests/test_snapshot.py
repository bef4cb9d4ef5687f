"""Snapshots (pyfastvm.snapshot): a guest saved whole and started again, from
disk or from a template in memory; what they refuse.

The tiny-guest tests run on every host. The Linux ones boot the minimal
kernel once, with the init that waits for its command, and freeze it into
a template the rest start from."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from boot_timeouts import MINIMAL_BOOT_TIMEOUT
from guests import LONG_COUNTING_LOOP, long_mode_vcpu
from test_resume import Counter, machine, memory_counter
from test_vcpu_state import COUNTING_MSRS

import pyfastvm
from pyfastvm.guest.console_protocol import READY, ConsoleProtocol, new_nonce
from pyfastvm.guest.initramfs import build_serving_initramfs
from pyfastvm.guest.minimal_kernel import minimal_kernel
from pyfastvm.ready_snapshots import send_command
from pyfastvm.snapshot import MEMORY_FILE, METADATA_FILE, Snapshot, SnapshotError, save

pytestmark = pytest.mark.hwkvm

RUN_TIMEOUT = 300.0


def counting_guest(tmp_path: Path) -> Path:
    """The counting guest of test_resume, stopped at 100 and saved."""
    counter = Counter()
    vm = machine(counter)
    vcpu = long_mode_vcpu(vm, LONG_COUNTING_LOOP)
    counter.vcpu, counter.stop_at = vcpu, 100
    assert vcpu.run().reason == "stopped"
    save(vm, [vcpu], tmp_path / "counting")
    return tmp_path / "counting"


def test_a_snapshot_taken_mid_loop_goes_on_exactly_there_each_time(tmp_path: Path) -> None:
    path = counting_guest(tmp_path)
    for stop_at in (150, 250):
        counter = Counter()
        with Snapshot.load(path) as snapshot:
            vm, (vcpu,) = snapshot.restore_vm(devices={"Counter": counter})
        assert counter.last == 100  # the device's own state came back
        counter.vcpu, counter.stop_at = vcpu, stop_at
        assert vcpu.run().reason == "stopped"
        assert (counter.last, counter.gaps) == (stop_at, [])  # 101 came first
        assert (vcpu.get_regs().rbx, memory_counter(vm)) == (stop_at, stop_at)


def test_the_metadata_is_documented_json_and_the_memory_sparse(tmp_path: Path) -> None:
    path = counting_guest(tmp_path)
    metadata = json.loads((path / METADATA_FILE).read_text())
    assert (metadata["format"], metadata["version"]) == ("pyfastvm-snapshot", 1)
    assert metadata["pyfastvm"] == pyfastvm.__version__
    assert [d["id"] for d in metadata["devices"]] == ["Counter"]
    assert metadata["devices"][0]["state"] == {"last": 100}
    assert len(metadata["vcpus"]) == 1 and metadata["vm"]["format"] == "pyfastvm.VmState"
    memory = path / MEMORY_FILE
    assert memory.stat().st_size == 16 << 20 and memory.stat().st_blocks * 512 < 1 << 20


def test_the_saved_vcpu_state_comes_back_field_by_field(tmp_path: Path) -> None:
    path = counting_guest(tmp_path)
    with Snapshot.load(path) as snapshot:
        _, (vcpu,) = snapshot.restore_vm(devices={"Counter": Counter()})
        saved = pyfastvm.VcpuState.from_document(snapshot.metadata["vcpus"][0])
    again = vcpu.save_state()
    assert repr(again.regs) == repr(saved.regs)
    assert repr(again.sregs) == repr(saved.sregs)
    assert (again.lapic, again.xsave, again.mp_state) == (saved.lapic, saved.xsave, saved.mp_state)
    assert {k: v for k, v in again.msrs.items() if k not in COUNTING_MSRS} == {
        k: v for k, v in saved.msrs.items() if k not in COUNTING_MSRS
    }


def damaged(path: Path, how: str) -> Path:
    metadata_file = path / METADATA_FILE
    metadata = json.loads(metadata_file.read_text())
    if how == "truncated metadata":
        metadata_file.write_text(metadata_file.read_text()[:100])
    elif how == "truncated memory":
        with (path / MEMORY_FILE).open("r+b") as memory:
            memory.truncate(1 << 20)
    elif how == "other version":
        metadata["version"] = 99
    elif how == "other format":
        metadata["format"] = "firecracker"
    elif how == "other host":
        metadata["host"]["kind"] = "hardware" if pyfastvm.host.host_profile().is_pvm else "pvm"
    elif how == "other cpu":
        metadata["host"]["cpu_vendor"] = "CyrixInstead"
    if how.startswith("other"):
        metadata_file.write_text(json.dumps(metadata))
    return path


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated metadata", "truncated or corrupted"),
        ("truncated memory", "memory file holds 1048576 bytes.*truncated"),
        ("other version", "format version 99"),
        ("other format", "not a pyfastvm-snapshot"),
        ("other host", "taken on a .* host and this one is"),
        ("other cpu", "CPU was CyrixInstead"),
    ],
)
def test_a_bad_snapshot_is_refused_with_the_reason(tmp_path: Path, how: str, message: str) -> None:
    path = damaged(counting_guest(tmp_path), how)
    with pytest.raises(SnapshotError, match=message):
        Snapshot.load(path)


def test_a_python_device_must_be_handed_back(tmp_path: Path) -> None:
    with (
        Snapshot.load(counting_guest(tmp_path)) as snapshot,
        pytest.raises(SnapshotError, match="pass it as devices=\\{'Counter': ...\\}"),
    ):
        snapshot.restore_vm()


# -- Linux ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> Iterator[Snapshot]:
    """The minimal kernel booted to the init that waits for its command,
    frozen into a template."""
    config = pyfastvm.VMConfig(kernel=minimal_kernel())
    booted = pyfastvm.MicroVM(config, initrd_overlay=build_serving_initramfs()).start()
    booted.wait_for(READY, MINIMAL_BOOT_TIMEOUT)
    with booted.freeze() as frozen:
        assert booted.stop_reason == "stopped"  # the template took its place
        yield frozen


def run_in(machine: pyfastvm.MicroVM, protocol: ConsoleProtocol, command: list[str]) -> bytes:
    send_command(machine, command, nonce=protocol.nonce)
    assert machine.wait_until(lambda: protocol.finished, RUN_TIMEOUT), machine.console_tail()
    assert protocol.exit_code == 0, protocol.stdout
    return protocol.stdout


def test_clones_of_a_linux_template_run_at_once_each_in_its_own_memory(
    template: Snapshot,
) -> None:
    protocols = [ConsoleProtocol(new_nonce()) for _ in range(3)]
    clones = [template.clone(console=p.feed) for p in protocols]
    try:
        command = "echo {} > /tmp/id; sleep 1; cat /tmp/id"
        for i, (clone, protocol) in enumerate(zip(clones, protocols, strict=True)):
            send_command(clone, ["sh", "-c", command.format(i)], nonce=protocol.nonce)
        for i, (clone, protocol) in enumerate(zip(clones, protocols, strict=True)):
            assert clone.wait_until(lambda p=protocol: p.finished, RUN_TIMEOUT)  # type: ignore[misc]
            assert (protocol.exit_code, protocol.stdout) == (0, f"{i}\n".encode())
    finally:
        for clone in clones:
            clone.close()


def test_a_linux_guest_written_to_disk_restores_alive(template: Snapshot, tmp_path: Path) -> None:
    template.save(tmp_path / "ready")
    protocol = ConsoleProtocol(new_nonce())
    with pyfastvm.MicroVM.restore(tmp_path / "ready", console=protocol.feed) as restored:
        assert restored.restored
        assert run_in(restored, protocol, ["uname", "-r"]).strip()


def test_a_snapshot_that_cannot_be_written_leaves_the_guest_running(
    template: Snapshot, tmp_path: Path
) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("not a directory")
    protocol = ConsoleProtocol(new_nonce())
    with template.clone(console=protocol.feed) as clone:
        with pytest.raises(SnapshotError, match="cannot create the snapshot directory"):
            clone.snapshot(blocker / "snapshot")
        assert not clone.paused and clone.stop_reason is None
        assert run_in(clone, protocol, ["echo", "still here"]) == b"still here\n"
    shutil.rmtree(tmp_path)
