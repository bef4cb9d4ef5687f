"""pyfastvm: a KVM micro-VM monitor you import from Python."""

from . import devices
from ._core import (
    MMIO_HOLE_END,
    MMIO_HOLE_START,
    CpuidEntry,
    DTable,
    Exit,
    Fpu,
    GuestMemory,
    Kvm,
    Regs,
    Segment,
    Sregs,
    Vcpu,
    Vm,
    __version__,
)
from .config import ConfigError, DeviceSpec, VMConfig
from .device import Device
from .errors import (
    BusConflictError,
    DeviceError,
    GuestError,
    GuestMemoryError,
    GuestPanicError,
    GuestTimeoutError,
    HostLimitationError,
    KvmError,
    KvmUnavailableError,
    UnclaimedAccessError,
    VcpuBusyError,
    VmmError,
)
from .init_chain import InitChain, InitStepError
from .machine import MicroVM
from .runner import RunResult, run
from .x86.emulation_assist import EmulationFailureError

__all__ = [
    "MMIO_HOLE_END",
    "MMIO_HOLE_START",
    "BusConflictError",
    "ConfigError",
    "CpuidEntry",
    "DTable",
    "Device",
    "DeviceError",
    "DeviceSpec",
    "EmulationFailureError",
    "Exit",
    "Fpu",
    "GuestError",
    "GuestMemory",
    "GuestMemoryError",
    "GuestPanicError",
    "GuestTimeoutError",
    "HostLimitationError",
    "InitChain",
    "InitStepError",
    "Kvm",
    "KvmError",
    "KvmUnavailableError",
    "MicroVM",
    "Regs",
    "RunResult",
    "Segment",
    "Sregs",
    "UnclaimedAccessError",
    "VMConfig",
    "Vcpu",
    "VcpuBusyError",
    "Vm",
    "VmmError",
    "__version__",
    "devices",
    "run",
]
