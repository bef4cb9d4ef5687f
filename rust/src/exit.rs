//! What `vcpu.run()` returns: why the guest stopped, with the details.

use kvm_bindings::KVM_INTERNAL_ERROR_EMULATION;
use pyo3::prelude::*;

use crate::devices::StopReason;

/// The reason a run ended. `reason` is one of "hlt", "shutdown", "debug_exit",
/// "reset", "poweroff", "fail_entry", "internal_error", "system_event", "stop"
/// or "unhandled";
/// the other fields are set where they apply and are None otherwise.
#[pyclass(frozen, get_all, module = "pyfastvm")]
#[derive(Debug, Default)]
pub struct Exit {
    pub reason: &'static str,
    /// debug_exit: the value the guest wrote.
    pub status: Option<u64>,
    /// internal_error: KVM_INTERNAL_ERROR_* (1 is an emulation failure).
    pub suberror: Option<u32>,
    /// internal_error and system_event: the data words KVM reported.
    pub data: Vec<u64>,
    /// system_event: KVM_SYSTEM_EVENT_* (1 shutdown, 2 reset, 3 crash).
    pub event_type: Option<u32>,
    /// fail_entry: the hardware's entry failure reason.
    pub hardware_entry_failure_reason: Option<u64>,
    /// unhandled: the raw KVM_EXIT_* number.
    pub exit_reason: Option<u32>,
    /// internal_error from the instruction emulator: the bytes of the
    /// instruction it could not emulate, when KVM reports them.
    pub instruction: Option<Vec<u8>>,
    /// debug_exit, reset and poweroff: the name of the device that ended the run.
    pub device: Option<String>,
}

impl Exit {
    pub fn new(reason: &'static str) -> Self {
        Exit {
            reason,
            ..Default::default()
        }
    }

    /// The run ended because `device` asked for it.
    pub fn stopped_by(reason: StopReason, device: String) -> Self {
        let exit = match reason {
            StopReason::DebugExit(status) => Exit {
                status: Some(status),
                ..Exit::new("debug_exit")
            },
            StopReason::Reset => Exit::new("reset"),
            StopReason::PowerOff => Exit::new("poweroff"),
        };
        Exit {
            device: Some(device),
            ..exit
        }
    }

    pub fn internal_error(suberror: u32, data: Vec<u64>, instruction: Option<Vec<u8>>) -> Self {
        Exit {
            suberror: Some(suberror),
            data,
            instruction,
            ..Exit::new("internal_error")
        }
    }

    /// KVM's instruction emulator met an instruction it cannot run.
    pub fn is_emulation_failure(&self) -> bool {
        self.suberror == Some(KVM_INTERNAL_ERROR_EMULATION)
    }
}

#[pymethods]
impl Exit {
    fn __repr__(&self) -> String {
        let mut details = Vec::new();
        if let Some(v) = self.status {
            details.push(format!("status={v}"));
        }
        if let Some(v) = self.suberror {
            details.push(format!("suberror={v}"));
        }
        if let Some(v) = self.event_type {
            details.push(format!("event_type={v}"));
        }
        if let Some(v) = self.hardware_entry_failure_reason {
            details.push(format!("hardware_entry_failure_reason={v:#x}"));
        }
        if let Some(v) = self.exit_reason {
            details.push(format!("exit_reason={v}"));
        }
        if let Some(d) = &self.device {
            details.push(format!("device={d:?}"));
        }
        if let Some(b) = &self.instruction {
            details.push(format!("instruction={b:02x?}"));
        }
        let mut text = format!("Exit(reason={:?}", self.reason);
        for d in details {
            text.push_str(", ");
            text.push_str(&d);
        }
        text + ")"
    }
}
