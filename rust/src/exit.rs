//! What `vcpu.run()` returns: why the guest stopped, with the details.

use kvm_bindings::KVM_INTERNAL_ERROR_EMULATION;
use pyo3::basic::CompareOp;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::devices::StopReason;

/// Why a run ended. Each reason equals its name as a string too
/// (`ExitReason.HALTED == "halted"`), the words `MicroVM.stop_reason` uses.
#[pyclass(
    frozen,
    skip_from_py_object,
    module = "pyfastvm",
    rename_all = "SCREAMING_SNAKE_CASE"
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// HLT without an in-kernel irqchip.
    Halted,
    /// A triple fault.
    Shutdown,
    /// The guest wrote to a DebugExit device (`status`).
    DebugExit,
    /// A device reset the machine (the ACPI reset register, the i8042).
    Reset,
    /// The guest entered ACPI S5.
    Poweroff,
    /// KVM could not enter the guest (`hardware_entry_failure_reason`).
    FailEntry,
    /// KVM reported an internal error (`suberror`, `data`, `instruction`).
    InternalError,
    /// KVM_EXIT_SYSTEM_EVENT (`event_type`, `data`).
    SystemEvent,
    /// `vcpu.stop()` or `vm.stop()`.
    Stopped,
    /// `vm.pause()`: the vCPU is at a clean point and may run on.
    Paused,
    /// An exit pyfastvm has no handling for (`exit_reason`).
    Unhandled,
}

impl ExitReason {
    pub fn name(self) -> &'static str {
        match self {
            ExitReason::Halted => "halted",
            ExitReason::Shutdown => "shutdown",
            ExitReason::DebugExit => "debug_exit",
            ExitReason::Reset => "reset",
            ExitReason::Poweroff => "poweroff",
            ExitReason::FailEntry => "fail_entry",
            ExitReason::InternalError => "internal_error",
            ExitReason::SystemEvent => "system_event",
            ExitReason::Stopped => "stopped",
            ExitReason::Paused => "paused",
            ExitReason::Unhandled => "unhandled",
        }
    }
}

#[pymethods]
impl ExitReason {
    /// The reason as a word: "halted", "debug_exit", ...
    #[getter]
    fn value(&self) -> &'static str {
        self.name()
    }

    fn __str__(&self) -> &'static str {
        self.name()
    }

    fn __repr__(&self) -> String {
        format!("ExitReason.{}", self.name().to_uppercase())
    }

    /// Equal to the same reason and to its name.
    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let equal = if let Ok(reason) = other.cast::<ExitReason>() {
            *reason.get() == *self
        } else if let Ok(text) = other.cast::<PyString>() {
            text.to_str()? == self.name()
        } else {
            return Ok(py.NotImplemented());
        };
        match op {
            CompareOp::Eq => Ok(equal.into_pyobject(py)?.to_owned().into_any().unbind()),
            CompareOp::Ne => Ok((!equal).into_pyobject(py)?.to_owned().into_any().unbind()),
            _ => Ok(py.NotImplemented()),
        }
    }

    /// Hashes as its name, so that a reason and its name are the same key.
    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        PyString::new(py, self.name()).hash()
    }
}

/// The reason a run ended, with the details its reason has; the other fields
/// are None.
#[pyclass(frozen, get_all, module = "pyfastvm")]
#[derive(Debug)]
pub struct Exit {
    pub reason: ExitReason,
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
    /// debug_exit, reset and poweroff: the id of the device that ended the run.
    pub device: Option<String>,
}

impl Exit {
    pub fn new(reason: ExitReason) -> Self {
        Exit {
            reason,
            status: None,
            suberror: None,
            data: Vec::new(),
            event_type: None,
            hardware_entry_failure_reason: None,
            exit_reason: None,
            instruction: None,
            device: None,
        }
    }

    /// The run ended because the device registered as `device` asked for it.
    pub fn stopped_by(reason: StopReason, device: &str) -> Self {
        let exit = match reason {
            StopReason::DebugExit(status) => Exit {
                status: Some(status),
                ..Exit::new(ExitReason::DebugExit)
            },
            StopReason::Reset => Exit::new(ExitReason::Reset),
            StopReason::PowerOff => Exit::new(ExitReason::Poweroff),
        };
        Exit {
            device: Some(device.to_owned()),
            ..exit
        }
    }

    pub fn internal_error(suberror: u32, data: Vec<u64>, instruction: Option<Vec<u8>>) -> Self {
        Exit {
            suberror: Some(suberror),
            data,
            instruction,
            ..Exit::new(ExitReason::InternalError)
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
        let mut text = format!("Exit(reason={:?}", self.reason.name());
        for d in details {
            text.push_str(", ");
            text.push_str(&d);
        }
        text + ")"
    }
}
