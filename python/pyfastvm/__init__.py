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
from .device import Device
from .errors import (
    BusConflictError,
    DeviceError,
    GuestMemoryError,
    KvmError,
    KvmUnavailableError,
    UnclaimedAccessError,
    VcpuBusyError,
    VmmError,
)

__all__ = [
    "MMIO_HOLE_END",
    "MMIO_HOLE_START",
    "BusConflictError",
    "CpuidEntry",
    "DTable",
    "Device",
    "DeviceError",
    "Exit",
    "Fpu",
    "GuestMemory",
    "GuestMemoryError",
    "Kvm",
    "KvmError",
    "KvmUnavailableError",
    "Regs",
    "Segment",
    "Sregs",
    "UnclaimedAccessError",
    "Vcpu",
    "VcpuBusyError",
    "Vm",
    "VmmError",
    "__version__",
    "devices",
]
