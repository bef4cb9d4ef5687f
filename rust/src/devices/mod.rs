//! Devices on the PIO and MMIO buses: the interface, the built-in Rust ones and
//! the adapter for devices written in Python.

mod builtin;
mod i8042;
mod pm_timer;
mod power_control;
mod python;
mod serial;

#[cfg(test)]
pub use builtin::Sink;
pub use builtin::{register as register_builtins, BuiltinDevice};
pub use python::PythonDevice;

use crate::error::Result;

/// What the vCPU loop does after a device handled an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoAction {
    /// Re-enter the guest.
    Continue,
    /// End `vcpu.run()` with this reason.
    Stop(StopReason),
}

/// Why a device ended the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote `status` to a debug-exit port.
    DebugExit(u64),
    /// The guest asked for a machine reset.
    Reset,
    /// The guest entered the soft-off sleep state (ACPI S5).
    PowerOff,
}

/// A device on a bus. `offset` is relative to the base of its range; `data`
/// holds one access of 1, 2, 4 or 8 bytes, little-endian.
pub trait Device: Send + Sync {
    fn name(&self) -> String;
    fn read(&self, offset: u64, data: &mut [u8]) -> Result<IoAction>;
    fn write(&self, offset: u64, data: &[u8]) -> Result<IoAction>;
}
