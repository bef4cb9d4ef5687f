//! pyfastvm._core: the KVM hot path of pyfastvm. Guest memory, the vCPU run
//! loop and PIO/MMIO dispatch live here; Python composes the rest.

#![deny(clippy::undocumented_unsafe_blocks)]

mod assist;
mod device_manager;
mod devices;
mod error;
mod exit;
mod kvm;
mod memory;
mod regs;
mod state;
mod vcpu;
mod virtio;
mod vm;
mod worker;
mod x86;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    vcpu::install_kick_handler()?;
    m.add_class::<kvm::Kvm>()?;
    m.add_class::<vm::Vm>()?;
    m.add_class::<vcpu::Vcpu>()?;
    m.add_class::<exit::Exit>()?;
    m.add_class::<exit::ExitReason>()?;
    m.add_class::<device_manager::DeviceInfo>()?;
    m.add_function(wrap_pyfunction!(memory::ram_layout, m)?)?;
    m.add_function(wrap_pyfunction!(memory::dump_ram_file, m)?)?;
    m.add_class::<memory::PyGuestMemory>()?;
    m.add_class::<regs::Regs>()?;
    m.add_class::<regs::Sregs>()?;
    m.add_class::<regs::Segment>()?;
    m.add_class::<regs::DTable>()?;
    m.add_class::<regs::Fpu>()?;
    m.add_class::<regs::CpuidEntry>()?;
    m.add_class::<state::python::PyVcpuState>()?;
    m.add_class::<state::python::PyVmState>()?;
    devices::register_builtins(m)?;
    virtio::register(m)?;
    for (name, exception) in [
        ("VmmError", py.get_type::<error::VmmError>()),
        (
            "KvmUnavailableError",
            py.get_type::<error::KvmUnavailableError>(),
        ),
        ("KvmError", py.get_type::<error::KvmError>()),
        ("GuestMemoryError", py.get_type::<error::GuestMemoryError>()),
        ("BusConflictError", py.get_type::<error::BusConflictError>()),
        (
            "UnclaimedAccessError",
            py.get_type::<error::UnclaimedAccessError>(),
        ),
        ("DeviceError", py.get_type::<error::DeviceError>()),
        ("VcpuBusyError", py.get_type::<error::VcpuBusyError>()),
        (
            "EmulationFailureError",
            py.get_type::<error::EmulationFailureError>(),
        ),
    ] {
        m.add(name, exception)?;
    }
    m.add("InvalidArgumentError", error::invalid_argument_error(py)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MMIO_HOLE_START", memory::MMIO_HOLE_START)?;
    m.add("MMIO_HOLE_END", memory::MMIO_HOLE_END)?;
    Ok(())
}
