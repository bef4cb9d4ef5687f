//! Devices built into the core; the guest's accesses to them never reach Python.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{Device, IoAction, StopReason};
use crate::error::Result;

/// Accepts every write and reads as zeros; the cheapest possible device.
pub struct Sink;

impl Device for Sink {
    fn kind(&self) -> String {
        "Sink".into()
    }

    fn read(&self, _offset: u64, data: &mut [u8]) -> Result<IoAction> {
        data.fill(0);
        Ok(IoAction::Continue)
    }

    fn write(&self, _offset: u64, _data: &[u8]) -> Result<IoAction> {
        Ok(IoAction::Continue)
    }
}

/// Like QEMU's isa-debug-exit: a write of value v ends the run with status v.
pub struct DebugExit;

impl Device for DebugExit {
    fn kind(&self) -> String {
        "DebugExit".into()
    }

    fn read(&self, _offset: u64, data: &mut [u8]) -> Result<IoAction> {
        data.fill(0);
        Ok(IoAction::Continue)
    }

    fn write(&self, _offset: u64, data: &[u8]) -> Result<IoAction> {
        let mut value = [0u8; 8];
        let n = data.len().min(8);
        value[..n].copy_from_slice(&data[..n]);
        Ok(IoAction::Stop(StopReason::DebugExit(u64::from_le_bytes(
            value,
        ))))
    }
}

/// Python handle of a device implemented in Rust; `vm.add_*_device` recognises
/// it and puts the Rust device itself on the bus.
#[pyclass(subclass, frozen, module = "pyfastvm.devices")]
pub struct BuiltinDevice {
    pub(crate) device: Arc<dyn Device>,
}

#[pymethods]
impl BuiltinDevice {
    /// Reads `size` bytes at `offset`, as the guest would.
    fn read<'py>(&self, py: Python<'py>, offset: u64, size: usize) -> Result<Bound<'py, PyBytes>> {
        let mut data = vec![0u8; size];
        self.device.read(offset, &mut data)?;
        Ok(PyBytes::new(py, &data))
    }

    /// Writes `data` at `offset`, as the guest would.
    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.device.write(offset, data).map(|_| ())
    }

    /// The device's state as a JSON-compatible dict, for a snapshot.
    fn save_state<'py>(slf: &Bound<'py, Self>) -> Result<Bound<'py, PyAny>> {
        super::save_device_state(slf.as_any())
    }

    /// Puts the device back in a state `save_state` returned, e.g. a new
    /// device of the same kind in a restored VM.
    fn restore_state(slf: &Bound<'_, Self>, state: &Bound<'_, PyAny>) -> Result<()> {
        super::restore_device_state(slf.as_any(), state)
    }

    fn __repr__(&self) -> String {
        format!("{}()", self.device.kind())
    }
}

/// The base-class part of a built-in device's Python handle.
pub(crate) fn initializer(device: Arc<dyn Device>) -> PyClassInitializer<BuiltinDevice> {
    PyClassInitializer::from(BuiltinDevice { device })
}

/// `pyfastvm.devices.Sink()`: accepts writes, reads as zeros.
#[pyclass(extends = BuiltinDevice, frozen, module = "pyfastvm.devices", name = "Sink")]
pub struct PySink;

#[pymethods]
impl PySink {
    #[new]
    fn py_new() -> PyClassInitializer<Self> {
        initializer(Arc::new(Sink)).add_subclass(PySink)
    }
}

/// `pyfastvm.devices.DebugExit()`: a guest write of v ends the run with
/// reason "debug_exit" and status v.
#[pyclass(extends = BuiltinDevice, frozen, module = "pyfastvm.devices", name = "DebugExit")]
pub struct PyDebugExit;

#[pymethods]
impl PyDebugExit {
    #[new]
    fn py_new() -> PyClassInitializer<Self> {
        initializer(Arc::new(DebugExit)).add_subclass(PyDebugExit)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BuiltinDevice>()?;
    m.add_class::<PySink>()?;
    m.add_class::<PyDebugExit>()?;
    m.add_class::<super::serial::PySerial>()?;
    m.add_class::<super::i8042::PyI8042>()?;
    m.add_class::<super::pm_timer::PyPmTimer>()?;
    m.add_class::<super::power_control::PyPowerControl>()?;
    m.add_function(wrap_pyfunction!(super::save_device_state, m)?)?;
    m.add_function(wrap_pyfunction!(super::restore_device_state, m)?)?;
    Ok(())
}
