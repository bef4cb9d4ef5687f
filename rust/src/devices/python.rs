//! A device written in Python: any object with `read(offset, size) -> bytes`
//! and `write(offset, data) -> None`, and optionally `snapshot() -> dict`
//! and `restore(state)`.

use std::os::fd::RawFd;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyBytesMethods};
use serde_json::Value;

use super::builtin::BuiltinDevice;
use super::{state, Device, IoAction};
use crate::error::{Error, Result};
use crate::state::pyjson;

/// The Rust device behind a Python object: a built-in device itself, or an
/// adapter calling a Python device's methods.
pub fn as_device(object: &Bound<'_, PyAny>) -> Result<Arc<dyn Device>> {
    Ok(match object.cast::<BuiltinDevice>() {
        Ok(builtin) => builtin.get().device.clone(),
        Err(_) => Arc::new(PythonDevice::new(object)?),
    })
}

pub struct PythonDevice {
    name: String,
    read: Py<PyAny>,
    write: Py<PyAny>,
    /// Its `irq_fd` attribute: an eventfd it signals its interrupt on.
    irq_fd: Option<RawFd>,
    snapshot: Option<Py<PyAny>>,
    restore: Option<Py<PyAny>>,
}

impl PythonDevice {
    /// Binds the object's `read` and `write` methods once, so an exit costs one call.
    pub fn new(object: &Bound<'_, PyAny>) -> Result<Self> {
        let name = object.get_type().name()?.to_string();
        let method = |attr: &str| -> Result<Py<PyAny>> {
            match object.getattr(attr) {
                Ok(m) if m.is_callable() => Ok(m.unbind()),
                _ => Err(Error::Device(format!(
                    "{name} is not a device: it needs a callable {attr}() \
                     (read(offset, size) -> bytes and write(offset, data) -> None; \
                     see pyfastvm.Device)"
                ))),
            }
        };
        let irq_fd = match object.getattr("irq_fd") {
            Ok(fd) => Some(fd.extract::<RawFd>()?),
            Err(_) => None,
        };
        let optional = |attr: &str| {
            object
                .getattr(attr)
                .ok()
                .filter(|m| m.is_callable())
                .map(Bound::unbind)
        };
        Ok(PythonDevice {
            read: method("read")?,
            write: method("write")?,
            irq_fd,
            snapshot: optional("snapshot"),
            restore: optional("restore"),
            name,
        })
    }
}

impl Device for PythonDevice {
    fn kind(&self) -> String {
        self.name.clone()
    }

    fn interrupt_fd(&self) -> Option<RawFd> {
        self.irq_fd
    }

    fn read(&self, offset: u64, data: &mut [u8]) -> Result<IoAction> {
        Python::attach(|py| {
            let answer = self.read.call1(py, (offset, data.len()))?;
            let bytes = answer.bind(py).cast::<PyBytes>().map_err(|_| {
                Error::Device(format!(
                    "{}.read({offset:#x}, {}) returned {}, not bytes",
                    self.name,
                    data.len(),
                    answer
                        .bind(py)
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?;
            let bytes = bytes.as_bytes();
            if bytes.len() != data.len() {
                return Err(Error::Device(format!(
                    "{}.read({offset:#x}, {}) returned {} bytes; it must return exactly {}",
                    self.name,
                    data.len(),
                    bytes.len(),
                    data.len()
                )));
            }
            data.copy_from_slice(bytes);
            // A Ctrl-C during the call: KVM_RUN, entered next, will not see it.
            py.check_signals()?;
            Ok(IoAction::Continue)
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<IoAction> {
        Python::attach(|py| {
            self.write.call1(py, (offset, PyBytes::new(py, data)))?;
            py.check_signals()?;
            Ok(IoAction::Continue)
        })
    }

    /// `snapshot()`, which must return JSON-compatible data; a device
    /// without one keeps no state.
    fn save_state(&self) -> Result<Value> {
        let Some(snapshot) = &self.snapshot else {
            return Ok(state::no_state());
        };
        Python::attach(|py| {
            let saved = snapshot.call0(py)?;
            pyjson::from_python(saved.bind(py), &format!("{}.snapshot()", self.name))
        })
    }

    fn restore_state(&self, saved: &Value) -> Result<()> {
        let Some(restore) = &self.restore else {
            return state::expect_no_state(&self.name, saved);
        };
        Python::attach(|py| {
            restore.call1(py, (pyjson::to_python(py, saved)?,))?;
            Ok(())
        })
    }
}
