"""Snapshots: a paused guest saved whole, and guests started again from it in
milliseconds, sharing its memory.

- ``MicroVM.snapshot(path)`` writes one to disk and ``MicroVM.restore(path)``
  starts a MicroVM from it; ``MicroVM.freeze()`` keeps one in memory, a
  template whose ``clone()`` starts a MicroVM with the template's RAM mapped
  copy-on-write, so N clones share every page none of them wrote.
- ``save(vm, vcpus, path)``, ``capture(vm, vcpus)`` and
  ``Snapshot.restore_vm()`` do the same for a bare Vm and its vCPUs.

On disk a snapshot is a directory:

    snapshot.json  metadata, readable without pyfastvm (all JSON):
        format "pyfastvm-snapshot", version 1, pyfastvm (the version that
        wrote it); host (kind "pvm" or "hardware", CPU vendor); memory (size
        in bytes); config (what was booted: kernel, initrd, cmdline, memory,
        vcpus); gsi_routing ([gsi, chip, pin] routes); vm (a
        pyfastvm.VmState document: PICs, I/O APIC, PIT, kvmclock); vcpus (a
        pyfastvm.VcpuState document each); devices (id, kind, space, base,
        length, gsi and the device's own state each); exit_assists (names,
        and what they learned of the guest)
    memory         guest RAM, its ranges one after the other from offset 0,
                   pages of zeros left as holes (a sparse file)

A snapshot restores only on a host of the same kind whose KVM offers every
CPU feature the guest was given, with the same pyfastvm version.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._core import (
    I8042,
    CpuidEntry,
    DebugExit,
    DeviceInfo,
    Kvm,
    PmTimer,
    PowerControl,
    Serial,
    Sink,
    Vcpu,
    VcpuState,
    Vm,
    VmmError,
    VmState,
    __version__,
    dump_ram_file,
    restore_device_state,
    save_device_state,
)
from .builder import BuildContext, drop_serial, drop_vcpus, drop_vm
from .config import VMConfig
from .host import host_profile
from .init_chain import InitChain
from .x86.cpuid import cpu_vendor, missing_features

if TYPE_CHECKING:
    from .microvm import MicroVM

FORMAT = "pyfastvm-snapshot"
VERSION = 1
METADATA_FILE = "snapshot.json"
MEMORY_FILE = "memory"
PAGE_SIZE = 4096
# Built-in devices a restore rebuilds by kind; a Python device comes from
# the caller (devices={id: object}).
BUILTIN_DEVICES = {
    "Serial": Serial,
    "I8042": I8042,
    "PmTimer": PmTimer,
    "PowerControl": PowerControl,
    "DebugExit": DebugExit,
    "Sink": Sink,
}


class SnapshotError(VmmError):
    """A snapshot cannot be taken or restored; the message says why and what
    to do."""


@dataclass
class Snapshot:
    """A saved guest: its metadata (see the module's docstring) and its RAM,
    an open file (a snapshot's memory file, or a template's memfd) that the
    snapshot closes when it is closed or collected."""

    metadata: dict[str, Any]
    memory_fd: int
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def load(cls, path: Path | str) -> Snapshot:
        """Reads and checks a snapshot directory written by `save`."""
        directory = Path(path)
        metadata = _read_metadata(directory / METADATA_FILE)
        try:
            fd = os.open(directory / MEMORY_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise SnapshotError(
                f"cannot open the snapshot's memory file in {directory}: {error.strerror}"
            ) from error
        snapshot = cls(metadata, fd)
        snapshot._check_memory_file()
        return snapshot

    @property
    def memory_size(self) -> int:
        return int(self.metadata["memory"]["size"])

    @functools.cached_property
    def vcpu_states(self) -> list[VcpuState]:
        """The vCPUs' states, parsed once for every restore and clone."""
        return [_vcpu_state(document) for document in self.metadata["vcpus"]]

    @functools.cached_property
    def vm_state(self) -> VmState:
        try:
            return VmState.from_document(self.metadata["vm"])
        except ValueError as error:
            raise SnapshotError(f"the snapshot's VM state is unusable: {error}") from error

    def save(self, path: Path | str) -> None:
        """Writes the snapshot to directory `path` (which must not exist)."""
        write(
            lambda fd: dump_ram_file(self.memory_fd, self.memory_size, fd),
            self.metadata,
            Path(path),
        )

    def restore_vm(self, *, devices: Mapping[str, object] | None = None) -> tuple[Vm, list[Vcpu]]:
        """A new Vm in the saved state, its RAM the snapshot's copy-on-write,
        its devices rebuilt (a Python device from `devices`, by id), and its
        vCPUs, ready to run."""
        vm = new_vm(self)
        restore_machine_state(vm, self)
        for saved in self.metadata["devices"]:
            add_saved_device(vm, saved, devices or {})
        return vm, restore_vcpus(vm, self)

    def clone(self, **options: Any) -> MicroVM:
        """A MicroVM started from this snapshot: `MicroVM.restore(self, ...)`."""
        from .microvm import MicroVM

        return MicroVM.restore(self, **options)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.memory_fd)

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_memory_file(self) -> None:
        held = os.fstat(self.memory_fd).st_size
        if held < self.memory_size:
            self.close()
            raise SnapshotError(
                f"the snapshot's memory file holds {held} bytes but the guest had "
                f"{self.memory_size}: it is truncated; take the snapshot again"
            )


def capture(vm: Vm, vcpus: list[Vcpu], *, config: Mapping[str, Any] | None = None) -> Snapshot:
    """A snapshot of `vm` in memory, its vCPUs stopped or paused: the state
    now, and RAM on a memfd (the VM's own when it has shared memory, so the
    VM must not run again; a copy otherwise)."""
    metadata = _metadata(vm, vcpus, config or {})
    if vm.memory_backing == "shared":
        assert vm.memory_fd is not None
        return Snapshot(metadata, os.dup(vm.memory_fd))
    copy = os.memfd_create("pyfastvm-snapshot", os.MFD_CLOEXEC)
    vm.memory.dump(copy)
    return Snapshot(metadata, copy)


def save(
    vm: Vm, vcpus: list[Vcpu], path: Path | str, *, config: Mapping[str, Any] | None = None
) -> None:
    """Writes a snapshot of `vm`, its vCPUs stopped or paused, to directory
    `path` (which must not exist); the VM may run on afterwards."""
    write(vm.memory.dump, _metadata(vm, vcpus, config or {}), Path(path))


def write(dump: Callable[[int], int], metadata: dict[str, Any], directory: Path) -> None:
    """The snapshot directory: RAM first, the metadata last, so a directory
    without its metadata is never taken for a snapshot."""
    try:
        directory.mkdir(parents=True)
    except OSError as error:
        raise SnapshotError(
            f"cannot create the snapshot directory {directory}: {error.strerror}; "
            "give a path that does not exist yet, in a writable directory"
        ) from error
    try:
        with (directory / MEMORY_FILE).open("wb") as memory:
            dump(memory.fileno())
        staged = directory / f"{METADATA_FILE}.tmp"
        staged.write_text(json.dumps(metadata))
        staged.rename(directory / METADATA_FILE)
    except (OSError, VmmError) as error:
        shutil.rmtree(directory, ignore_errors=True)
        raise SnapshotError(f"cannot write the snapshot to {directory}: {error}") from error


def _metadata(vm: Vm, vcpus: list[Vcpu], config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "pyfastvm": __version__,
        "host": {"kind": host_profile().kind, "cpu_vendor": cpu_vendor(vm.kvm.supported_cpuid())},
        "memory": {"size": vm.memory_size},
        "config": dict(config),
        "gsi_routing": [list(route) for route in vm.gsi_routing],
        "vm": vm.save_state().to_document(),
        "vcpus": [vcpu.save_state().to_document() for vcpu in vcpus],
        "devices": [_device_record(info) for info in vm.devices],
        "exit_assists": {"names": vm.exit_assists, "state": vm.exit_assist_state()},
    }


def _device_record(info: DeviceInfo) -> dict[str, Any]:
    """A registered device as the metadata keeps it, its state included."""
    record: dict[str, Any] = {
        name: getattr(info, name) for name in ("id", "kind", "space", "base", "length", "gsi")
    }
    record["state"] = save_device_state(info.device)
    return record


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise SnapshotError(
            f"{path.parent} is not a snapshot: it has no {METADATA_FILE}"
        ) from error
    except (OSError, ValueError) as error:
        raise SnapshotError(
            f"{path} is not readable snapshot metadata ({error}): the snapshot is truncated "
            "or corrupted; take it again"
        ) from error
    check_metadata(metadata)
    return metadata if isinstance(metadata, dict) else {}


def check_metadata(metadata: object) -> None:
    """Refuses metadata of another format, version or pyfastvm, or from a host
    this one cannot stand in for."""
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise SnapshotError(f"this is not a {FORMAT} document: the snapshot is corrupted")
    if metadata.get("version") != VERSION or metadata.get("pyfastvm") != __version__:
        raise SnapshotError(
            f"the snapshot is format version {metadata.get('version')} from pyfastvm "
            f"{metadata.get('pyfastvm')}; this is version {VERSION} of pyfastvm {__version__}: "
            "take the snapshot again with this pyfastvm"
        )
    required = ("host", "memory", "config", "gsi_routing", "vm", "vcpus", "devices", "exit_assists")
    missing = [key for key in required if key not in metadata]
    if missing:
        raise SnapshotError(f"the snapshot metadata lacks {', '.join(missing)}: it is corrupted")
    check_host(metadata)


def check_host(metadata: Mapping[str, Any]) -> None:
    """The snapshot's guest can run here: a host of the same kind (the PVM
    exit assists' hook lives in the guest's IDT), and a CPU of the same
    vendor whose KVM offers every feature the guest was given."""
    here = host_profile().kind
    taken = metadata["host"].get("kind")
    if taken != here:
        raise SnapshotError(
            f"the snapshot was taken on a {taken} host and this one is {here}: a guest "
            "restores only on the kind of host it was taken on"
        )
    offered = offered_cpuid()
    vendor = cpu_vendor(offered)
    if metadata["host"].get("cpu_vendor") != vendor:
        raise SnapshotError(
            f"the snapshot's CPU was {metadata['host'].get('cpu_vendor')} and this one is {vendor}"
        )
    for document in metadata["vcpus"]:
        missing = missing_features(_vcpu_state(document).cpuid, offered)
        if missing:
            raise SnapshotError(
                "the snapshot's guest was given CPU features this host's KVM does not "
                f"offer ({', '.join(missing)}): restore it on a host like the one it came from"
            )


@functools.cache
def offered_cpuid() -> list[CpuidEntry]:
    """What a guest can be given here: the CPUID a vCPU set with all that KVM
    supports reads back as (on KVM on PVM that is the host's own bits, more
    than KVM_GET_SUPPORTED_CPUID lists)."""
    vcpu = Vm(PAGE_SIZE).create_vcpu(0)
    vcpu.set_cpuid(Kvm().supported_cpuid())
    return vcpu.get_cpuid()


def _vcpu_state(document: object) -> VcpuState:
    try:
        return VcpuState.from_document(document)
    except ValueError as error:
        raise SnapshotError(f"a vCPU state in the snapshot is unusable: {error}") from error


def new_vm(snapshot: Snapshot) -> Vm:
    """An empty VM whose RAM is the snapshot's, copy-on-write."""
    return Vm(snapshot.memory_size, ignore_unclaimed=True, memory_from=snapshot.memory_fd)


def restore_machine_state(vm: Vm, snapshot: Snapshot) -> None:
    """The exit assists (and what they learned), the interrupt controllers
    and routes, the PIT and the clock, as saved."""
    metadata = snapshot.metadata
    assists = metadata["exit_assists"]
    if assists["names"]:
        vm.enable_exit_assists(list(assists["names"]))
        vm.restore_exit_assist_state(assists["state"])
    state = snapshot.vm_state
    if state.pic_master is not None:
        vm.create_irqchip()
        vm.set_gsi_routing([tuple(route) for route in metadata["gsi_routing"]])
    if state.pit is not None:
        vm.create_pit()
    vm.restore_state(state)


def add_saved_device(vm: Vm, saved: Mapping[str, Any], given: Mapping[str, object]) -> None:
    """A saved device back in its place: the caller's object for its id, or a
    new built-in device of its kind, in the saved state."""
    device = given.get(saved["id"])
    if device is None:
        builtin = BUILTIN_DEVICES.get(saved["kind"])
        if builtin is None:
            raise SnapshotError(
                f"the snapshot has device {saved['id']!r}, a {saved['kind']} that pyfastvm "
                "cannot rebuild alone (a Python device, or a virtio device with its host file "
                f"or socket): pass it as devices={{{saved['id']!r}: ...}} to restore it"
            )
        device = builtin()
    restore_device_state(device, saved["state"])
    add = vm.add_pio_device if saved["space"] == "pio" else vm.add_mmio_device
    add(saved["base"], saved["length"], device, id=saved["id"], gsi=saved["gsi"])


def restore_vcpus(vm: Vm, snapshot: Snapshot) -> list[Vcpu]:
    vcpus = []
    for index, state in enumerate(snapshot.vcpu_states):
        vcpu = vm.create_vcpu(index)
        vcpu.restore_state(state)
        vcpus.append(vcpu)
    return vcpus


def restore_chain(snapshot: Snapshot, devices: Mapping[str, object]) -> InitChain[BuildContext]:
    """The init chain of a MicroVM restored from `snapshot`: no kernel to
    load and no tables to write (they are in its RAM), the rest as saved."""

    def create_vm(ctx: BuildContext) -> None:
        ctx.created_vm = new_vm(snapshot)

    def add_devices(ctx: BuildContext) -> None:
        for saved in snapshot.metadata["devices"]:
            add_saved_device(ctx.vm, saved, devices)
        ctx.serial = next(
            (info.device for info in ctx.vm.devices if isinstance(info.device, Serial)), None
        )

    def create_vcpus(ctx: BuildContext) -> None:
        ctx.vcpus = restore_vcpus(ctx.vm, snapshot)

    chain: InitChain[BuildContext] = InitChain()
    chain.add("vm", "core", create_vm, drop_vm)
    chain.add("machine-state", "base", lambda ctx: restore_machine_state(ctx.vm, snapshot))
    chain.add("devices", "dev", add_devices, drop_serial)
    chain.add("vcpus", "late", create_vcpus, drop_vcpus)
    return chain


def restored_config(snapshot: Snapshot) -> VMConfig:
    """The VMConfig of a restored guest: its memory, vCPUs and command line
    (its kernel was loaded when it booted)."""
    config = snapshot.metadata["config"]
    return VMConfig(
        memory=snapshot.memory_size,
        vcpus=len(snapshot.metadata["vcpus"]),
        cmdline=config.get("cmdline", ""),
    )
