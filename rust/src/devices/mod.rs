//! Devices on the PIO and MMIO buses: the interface, the built-in Rust ones and
//! the adapter for devices written in Python.

mod builtin;
mod i8042;
mod pm_timer;
mod power_control;
mod python;
mod serial;
mod serial_state;
pub(crate) mod state;

pub use builtin::register as register_builtins;
pub(crate) use builtin::{initializer, BuiltinDevice};
#[cfg(test)]
pub use builtin::{DebugExit, Sink};
pub use python::as_device;
pub use state::{restore_device_state, save_device_state};

use serde_json::Value;

use std::os::fd::RawFd;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use crate::error::Result;
use crate::worker::WorkerControl;

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

/// A guest write the VM turns into an eventfd signal inside KVM
/// (KVM_IOEVENTFD), so it never exits to the VMM: a 4-byte write of `value`
/// at `offset` in the device's range signals `fd` (a virtio QueueNotify).
pub struct IoEvent {
    pub offset: u64,
    pub value: u32,
    pub fd: RawFd,
}

/// A device on a bus. `offset` is relative to the base of its range; `data`
/// holds one access of 1, 2, 4 or 8 bytes, little-endian.
pub trait Device: Send + Sync {
    /// The type of device, as ids and errors name it.
    fn kind(&self) -> String;

    /// The eventfd the device signals its interrupt on, which the VM connects
    /// to the device's GSI (KVM_IRQFD); None for a device without one.
    fn interrupt_fd(&self) -> Option<RawFd> {
        None
    }

    /// The control of the device's worker thread, if it works on one: the VM
    /// pauses, resumes and stops it with its vCPUs.
    fn worker(&self) -> Option<&WorkerControl> {
        None
    }

    /// The writes KVM should signal on eventfds instead of exiting.
    fn ioevents(&self) -> Vec<IoEvent> {
        Vec::new()
    }

    /// Gives a device that reads and writes guest RAM itself (a virtio
    /// device, from its own thread) the RAM of the VM it is added to.
    fn attach_memory(&self, _memory: &Arc<GuestMemoryMmap>) -> Result<()> {
        Ok(())
    }

    fn read(&self, offset: u64, data: &mut [u8]) -> Result<IoAction>;
    fn write(&self, offset: u64, data: &[u8]) -> Result<IoAction>;

    /// The device's state for a snapshot, as JSON; `{}` for a device that
    /// keeps none.
    fn save_state(&self) -> Result<Value> {
        Ok(state::no_state())
    }

    /// Puts the device back in a state `save_state` returned.
    fn restore_state(&self, state: &Value) -> Result<()> {
        state::expect_no_state(&self.kind(), state)
    }
}
