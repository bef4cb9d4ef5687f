"""Type stubs for pyfastvm._core, the Rust extension."""

import os
from pathlib import Path
from typing import Any, ClassVar, final

__version__: str
MMIO_HOLE_START: int
MMIO_HOLE_END: int

class VmmError(Exception): ...
class KvmUnavailableError(VmmError): ...
class KvmError(VmmError): ...
class GuestMemoryError(VmmError): ...
class BusConflictError(VmmError): ...
class UnclaimedAccessError(VmmError): ...
class DeviceError(VmmError): ...
class VcpuBusyError(VmmError): ...
class EmulationFailureError(VmmError): ...
class InvalidArgumentError(VmmError, ValueError): ...

@final
class Kvm:
    def __init__(self, path: str = "/dev/kvm") -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def api_version(self) -> int: ...
    @property
    def vcpu_mmap_size(self) -> int: ...
    def check_extension(self, cap: int) -> int: ...
    def supported_cpuid(self) -> list[CpuidEntry]: ...

@final
class GuestMemory:
    @property
    def size(self) -> int: ...
    @property
    def regions(self) -> list[tuple[int, int]]: ...
    def read(self, gpa: int, size: int) -> bytes: ...
    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...
    def view(self, gpa: int, size: int) -> memoryview: ...
    def dump(self, fd: int) -> int:
        """Writes RAM to `fd` (ranges in order, zero pages as holes); returns
        the bytes of data written."""

def ram_layout(memory_size: int) -> list[tuple[int, int]]:
    """(guest-physical address, length) of each RAM range of a VM of that size."""

def dump_ram_file(source_fd: int, memory_size: int, target_fd: int) -> int:
    """Copies a RAM image file to another, sparse; the bytes of data written."""

@final
class DeviceInfo:
    id: str
    kind: str
    space: str
    base: int
    length: int
    gsi: int | None
    device: Any

@final
class Vm:
    def __init__(
        self,
        memory_size: int,
        kvm: Kvm | None = None,
        ignore_unclaimed: bool = False,
        *,
        memory_from: int | None = None,
        shared_memory: bool = False,
    ) -> None: ...
    @property
    def memory_fd(self) -> int | None: ...
    @property
    def memory_backing(self) -> str: ...
    @property
    def gsi_routing(self) -> list[tuple[int, str, int]]: ...
    @property
    def kvm(self) -> Kvm: ...
    @property
    def memory(self) -> GuestMemory: ...
    @property
    def memory_size(self) -> int: ...
    @property
    def ignore_unclaimed(self) -> bool: ...
    def add_pio_device(
        self, base: int, length: int, device: Any, *, id: str | None = None, gsi: int | None = None
    ) -> DeviceInfo: ...
    def add_mmio_device(
        self,
        base: int | None,
        length: int,
        device: Any,
        *,
        id: str | None = None,
        gsi: int | None = None,
    ) -> DeviceInfo: ...
    def allocate_gsi(self) -> int: ...
    @property
    def devices(self) -> list[DeviceInfo]: ...
    def create_irqchip(self) -> None: ...
    def create_pit(self) -> None: ...
    def set_gsi_routing(self, routes: list[tuple[int, str, int]]) -> None:
        """Replaces KVM's interrupt routing: each (gsi, chip, pin) sends line
        gsi to a pin of "pic_master", "pic_slave" or "ioapic"."""
    def register_irqfd(self, fd: int, gsi: int) -> None: ...
    def set_irq_line(self, irq: int, active: bool) -> None: ...
    def signal_msi(self, address: int, data: int) -> bool:
        """Sends an MSI (KVM_SIGNAL_MSI); True if a local APIC took it."""
    def create_vcpu(self, index: int) -> Vcpu: ...
    def stop(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def enable_exit_assists(self, names: list[str]) -> None:
        """Has the run loop complete the guest work this host's KVM leaves to
        user space: any of "syscall", "int3", "fwait", "ldmxcsr". Once."""
    @property
    def exit_assists(self) -> list[str]: ...
    def exit_assist_counts(self) -> dict[str, int]: ...
    def exit_assist_state(self) -> dict[str, Any]: ...
    def restore_exit_assist_state(self, state: dict[str, Any]) -> None: ...
    def save_state(self) -> VmState:
        """Saves the in-kernel PICs, I/O APIC, PIT and kvmclock; vCPUs stopped."""
    def restore_state(self, state: VmState) -> None:
        """Puts them back, into a VM with the same in-kernel devices created."""

@final
class Vcpu:
    @property
    def index(self) -> int: ...
    def run(self) -> Exit: ...
    def stop(self) -> None: ...
    def pause(self) -> None: ...
    def kvmclock_ctrl(self) -> bool: ...
    def get_regs(self) -> Regs: ...
    def set_regs(self, regs: Regs) -> None: ...
    def get_sregs(self) -> Sregs: ...
    def set_sregs(self, sregs: Sregs) -> None: ...
    def get_fpu(self) -> Fpu: ...
    def set_fpu(self, fpu: Fpu) -> None: ...
    def get_msrs(self, indices: list[int]) -> dict[int, int]: ...
    def set_msrs(self, values: dict[int, int]) -> None: ...
    def set_cpuid(self, entries: list[CpuidEntry]) -> None: ...
    def get_cpuid(self) -> list[CpuidEntry]: ...
    def get_lapic(self) -> bytes: ...
    def set_lapic(self, regs: bytes) -> None: ...
    def translate(self, gva: int) -> int | None: ...
    def inject_exception(self, vector: int, error_code: int | None = None) -> None: ...
    def save_state(self) -> VcpuState:
        """Saves the whole vCPU state, after completing a pending PIO/MMIO exit."""
    def restore_state(self, state: VcpuState) -> None: ...

@final
class VcpuState:
    """A vCPU's whole state; kernel structs without a class are their bytes."""

    VERSION: ClassVar[int]
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(json: str) -> VcpuState: ...
    def to_document(self) -> dict[str, Any]: ...
    @staticmethod
    def from_document(document: object) -> VcpuState: ...
    @property
    def regs(self) -> Regs: ...
    @property
    def sregs(self) -> Sregs: ...
    @property
    def xsave(self) -> bytes | None: ...
    @property
    def fpu(self) -> Fpu | None: ...
    @property
    def xcrs(self) -> dict[int, int] | None: ...
    @property
    def debugregs(self) -> bytes: ...
    @property
    def lapic(self) -> bytes | None: ...
    @property
    def mp_state(self) -> int: ...
    @property
    def vcpu_events(self) -> bytes: ...
    @property
    def msrs(self) -> dict[int, int]: ...
    @property
    def unreadable_msrs(self) -> list[int]: ...
    @property
    def tsc_khz(self) -> int | None: ...
    @property
    def cpuid(self) -> list[CpuidEntry]: ...

@final
class VmState:
    """A VM's in-kernel interrupt controllers, PIT and clock."""

    VERSION: ClassVar[int]
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(json: str) -> VmState: ...
    def to_document(self) -> dict[str, Any]: ...
    @staticmethod
    def from_document(document: object) -> VmState: ...
    @property
    def clock(self) -> int: ...
    @property
    def pic_master(self) -> bytes | None: ...
    @property
    def pic_slave(self) -> bytes | None: ...
    @property
    def ioapic(self) -> bytes | None: ...
    @property
    def pit(self) -> bytes | None: ...

@final
class ExitReason:
    """Why a run ended; equal to its word too (ExitReason.HALTED == "halted")."""

    HALTED: ClassVar[ExitReason]
    SHUTDOWN: ClassVar[ExitReason]
    DEBUG_EXIT: ClassVar[ExitReason]
    RESET: ClassVar[ExitReason]
    POWEROFF: ClassVar[ExitReason]
    FAIL_ENTRY: ClassVar[ExitReason]
    INTERNAL_ERROR: ClassVar[ExitReason]
    SYSTEM_EVENT: ClassVar[ExitReason]
    STOPPED: ClassVar[ExitReason]
    PAUSED: ClassVar[ExitReason]
    UNHANDLED: ClassVar[ExitReason]
    @property
    def value(self) -> str: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Exit:
    reason: ExitReason
    status: int | None
    suberror: int | None
    data: list[int]
    event_type: int | None
    hardware_entry_failure_reason: int | None
    exit_reason: int | None
    instruction: bytes | None
    device: str | None

class Regs:
    rax: int
    rbx: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    rsp: int
    rbp: int
    r8: int
    r9: int
    r10: int
    r11: int
    r12: int
    r13: int
    r14: int
    r15: int
    rip: int
    rflags: int
    def __init__(
        self,
        rax: int = 0,
        rbx: int = 0,
        rcx: int = 0,
        rdx: int = 0,
        rsi: int = 0,
        rdi: int = 0,
        rsp: int = 0,
        rbp: int = 0,
        r8: int = 0,
        r9: int = 0,
        r10: int = 0,
        r11: int = 0,
        r12: int = 0,
        r13: int = 0,
        r14: int = 0,
        r15: int = 0,
        rip: int = 0,
        rflags: int = 0,
    ) -> None: ...

class Segment:
    base: int
    limit: int
    selector: int
    type: int
    present: int
    dpl: int
    db: int
    s: int
    l: int
    g: int
    avl: int
    unusable: int
    def __init__(
        self,
        base: int = 0,
        limit: int = 0,
        selector: int = 0,
        type: int = 0,
        present: int = 0,
        dpl: int = 0,
        db: int = 0,
        s: int = 0,
        l: int = 0,
        g: int = 0,
        avl: int = 0,
        unusable: int = 0,
    ) -> None: ...

class DTable:
    base: int
    limit: int
    def __init__(self, base: int = 0, limit: int = 0) -> None: ...

class Sregs:
    cs: Segment
    ds: Segment
    es: Segment
    fs: Segment
    gs: Segment
    ss: Segment
    tr: Segment
    ldt: Segment
    gdt: DTable
    idt: DTable
    cr0: int
    cr2: int
    cr3: int
    cr4: int
    cr8: int
    efer: int
    apic_base: int
    interrupt_bitmap: list[int]

class Fpu:
    fpr: list[bytes]
    fcw: int
    fsw: int
    ftwx: int
    last_opcode: int
    last_ip: int
    last_dp: int
    xmm: list[bytes]
    mxcsr: int

class CpuidEntry:
    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int
    def __init__(
        self,
        function: int = 0,
        index: int = 0,
        flags: int = 0,
        eax: int = 0,
        ebx: int = 0,
        ecx: int = 0,
        edx: int = 0,
    ) -> None: ...

class BuiltinDevice:
    def read(self, offset: int, size: int) -> bytes: ...
    def write(self, offset: int, data: bytes) -> None: ...
    def save_state(self) -> dict[str, Any]: ...
    def restore_state(self, state: dict[str, Any]) -> None: ...

def save_device_state(device: Any) -> dict[str, Any]:
    """A built-in or Python device's state as a snapshot keeps it."""

def restore_device_state(device: Any, state: dict[str, Any]) -> None: ...

@final
class Sink(BuiltinDevice):
    def __init__(self) -> None: ...

@final
class DebugExit(BuiltinDevice):
    def __init__(self) -> None: ...

@final
class Serial(BuiltinDevice):
    PORTS: ClassVar[int]
    def __init__(self) -> None: ...
    def read_output(self) -> bytes: ...
    @property
    def output_fd(self) -> int: ...
    @property
    def irq_fd(self) -> int: ...
    def write_input(self, data: bytes) -> int: ...

@final
class I8042(BuiltinDevice):
    def __init__(self) -> None: ...

class PmTimer(BuiltinDevice):
    """The ACPI PM timer: a 24-bit counter at FREQUENCY Hz on 4 ports."""

    FREQUENCY: ClassVar[int]
    PORTS: ClassVar[int]
    def __init__(self) -> None: ...

class PowerControl(BuiltinDevice):
    """The hardware-reduced ACPI sleep control/status and reset registers,
    at offsets SLEEP_CONTROL, SLEEP_STATUS and RESET of PORTS ports."""

    SLEEP_CONTROL: ClassVar[int]
    SLEEP_STATUS: ClassVar[int]
    RESET: ClassVar[int]
    PORTS: ClassVar[int]
    S5_SLEEP_TYPE: ClassVar[int]
    RESET_VALUE: ClassVar[int]
    def __init__(self) -> None: ...

class VirtioBlk(BuiltinDevice):
    """virtio-blk on virtio-mmio: a disk backed by the raw image at `path`.
    Add it with ``vm.add_mmio_device(None, VirtioBlk.WINDOW, disk, gsi=vm.allocate_gsi())``."""

    WINDOW: ClassVar[int]
    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None: ...
    @property
    def path(self) -> Path: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def capacity(self) -> int: ...
    @property
    def discard(self) -> bool: ...
    def refresh_capacity(self) -> bool: ...

class VirtioRng(BuiltinDevice):
    """virtio-rng on virtio-mmio, fed from the host's getrandom."""

    WINDOW: ClassVar[int]
    def __init__(self) -> None: ...

class VirtioVsock(BuiltinDevice):
    """virtio-vsock on virtio-mmio with the host side on Unix sockets: host
    programs connect to `path` and send ``CONNECT <port>\\n``; guest
    connections to host port P reach the listener at ``<path>_P``."""

    WINDOW: ClassVar[int]
    def __init__(self, cid: int, path: str | os.PathLike[str]) -> None: ...
    @property
    def cid(self) -> int: ...
    @property
    def path(self) -> Path: ...
