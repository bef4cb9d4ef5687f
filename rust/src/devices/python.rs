//! A device written in Python: any object with `read(offset, size) -> bytes`
//! and `write(offset, data) -> None`.

use std::os::fd::RawFd;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyBytesMethods};

use super::{Device, IoAction};
use crate::error::{Error, Result};

pub struct PythonDevice {
    name: String,
    read: Py<PyAny>,
    write: Py<PyAny>,
    /// Its `irq_fd` attribute: an eventfd it signals its interrupt on.
    irq_fd: Option<RawFd>,
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
        Ok(PythonDevice {
            read: method("read")?,
            write: method("write")?,
            irq_fd,
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
}
