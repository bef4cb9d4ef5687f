//! The PC keyboard controller, only as far as the guest uses it to reset the
//! machine (command 0xFE on port 0x64), from vm-superio.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;
use vm_superio::{I8042Device, Trigger};

use super::builtin::{initializer, BuiltinDevice};
use super::{Device, IoAction, StopReason};
use crate::error::Result;

/// Records that the guest asked for a CPU reset.
#[derive(Clone, Default)]
struct ResetRequest(Arc<AtomicBool>);

impl Trigger for ResetRequest {
    type E = std::convert::Infallible;

    fn trigger(&self) -> std::result::Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

pub struct I8042 {
    controller: Mutex<I8042Device<ResetRequest>>,
    reset: ResetRequest,
}

impl Device for I8042 {
    fn kind(&self) -> String {
        "I8042".into()
    }

    fn read(&self, offset: u64, data: &mut [u8]) -> Result<IoAction> {
        let mut controller = self
            .controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        data.fill(0);
        data[0] = controller.read(offset as u8);
        Ok(IoAction::Continue)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<IoAction> {
        let mut controller = self
            .controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Ok(()) = controller.write(offset as u8, data[0]);
        if self.reset.0.swap(false, Ordering::SeqCst) {
            return Ok(IoAction::Stop(StopReason::Reset));
        }
        Ok(IoAction::Continue)
    }
}

/// `pyfastvm.devices.I8042()`: put it on ports 0x60-0x64; the guest's reset
/// command ends the run with reason "reset".
#[pyclass(extends = BuiltinDevice, frozen, module = "pyfastvm.devices", name = "I8042")]
pub struct PyI8042;

#[pymethods]
impl PyI8042 {
    #[new]
    fn py_new() -> PyClassInitializer<Self> {
        let reset = ResetRequest::default();
        let device = I8042 {
            controller: Mutex::new(I8042Device::new(reset.clone())),
            reset,
        };
        initializer(Arc::new(device)).add_subclass(PyI8042)
    }
}
