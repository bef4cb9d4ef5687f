//! Python access to guest RAM: copies, and zero-copy buffers that keep the
//! mapping alive.

use std::os::fd::RawFd;
use std::os::raw::c_int;
use std::sync::Arc;

use pyo3::buffer::PyBuffer;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{dump, dup_file};
use crate::error::{Error, Result};

fn describe_layout(mem: &GuestMemoryMmap) -> String {
    mem.iter()
        .map(|r| {
            format!(
                "{:#x}-{:#x}",
                r.start_addr().0,
                r.start_addr().0 + r.len() - 1
            )
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

fn out_of_range(mem: &GuestMemoryMmap, what: &str, gpa: u64, len: usize) -> Error {
    Error::GuestMemory(format!(
        "guest memory {what} of {len} byte(s) at {gpa:#x} falls outside guest RAM ({})",
        describe_layout(mem)
    ))
}

/// `vm.memory`: reads, writes and zero-copy views of guest RAM.
#[pyclass(frozen, module = "pyfastvm", name = "GuestMemory")]
pub struct PyGuestMemory {
    pub(crate) ram: Arc<GuestMemoryMmap>,
}

impl PyGuestMemory {
    /// Host address of `[gpa, gpa + len)`, which must lie inside one region.
    fn host_range(&self, gpa: u64, len: usize) -> Result<*mut u8> {
        let region = self
            .ram
            .find_region(GuestAddress(gpa))
            .ok_or_else(|| out_of_range(&self.ram, "view", gpa, len))?;
        let offset = gpa - region.start_addr().0;
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > region.len())
        {
            return Err(out_of_range(&self.ram, "view", gpa, len));
        }
        self.ram
            .get_host_address(GuestAddress(gpa))
            .map_err(|_| out_of_range(&self.ram, "view", gpa, len))
    }
}

#[pymethods]
impl PyGuestMemory {
    /// Total bytes of guest RAM.
    #[getter]
    fn size(&self) -> u64 {
        self.ram.iter().map(|r| r.len()).sum()
    }

    /// Writes guest RAM to open file descriptor `fd`, the ranges one after
    /// the other from offset 0, pages of zeros left as holes; returns the
    /// bytes of data written. Pause the vCPUs first for a consistent copy.
    fn dump(&self, py: Python<'_>, fd: RawFd) -> Result<u64> {
        let file = dup_file(fd)?;
        py.detach(|| dump::dump(&self.ram, &file))
    }

    /// The RAM regions as (guest physical address, size) pairs.
    #[getter]
    fn regions(&self) -> Vec<(u64, u64)> {
        self.ram
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect()
    }

    /// Copies `size` bytes of guest memory starting at `gpa`.
    fn read<'py>(&self, py: Python<'py>, gpa: u64, size: usize) -> Result<Bound<'py, PyBytes>> {
        let mut buf = vec![0u8; size];
        self.ram
            .read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|_| out_of_range(&self.ram, "read", gpa, size))?;
        Ok(PyBytes::new(py, &buf))
    }

    /// Copies `data` (any bytes-like object) into guest memory at `gpa`.
    fn write(&self, py: Python<'_>, gpa: u64, data: PyBuffer<u8>) -> Result<()> {
        let bytes = data.to_vec(py)?;
        self.ram
            .write_slice(&bytes, GuestAddress(gpa))
            .map_err(|_| out_of_range(&self.ram, "write", gpa, bytes.len()))
    }

    /// A writable memoryview of `[gpa, gpa + size)` without copying; it keeps
    /// the mapping alive for as long as it exists.
    fn view<'py>(
        &self,
        py: Python<'py>,
        gpa: u64,
        size: usize,
    ) -> Result<Bound<'py, PyMemoryView>> {
        let host = self.host_range(gpa, size)?;
        let window = Bound::new(
            py,
            MemoryWindow {
                _ram: self.ram.clone(),
                host: host as usize,
                len: size,
            },
        )?;
        Ok(PyMemoryView::from(window.as_any())?)
    }

    fn __repr__(&self) -> String {
        format!("GuestMemory({})", describe_layout(&self.ram))
    }
}

/// The exporter behind `GuestMemory.view`: a slice of one RAM region.
#[pyclass(frozen, module = "pyfastvm")]
pub struct MemoryWindow {
    _ram: Arc<GuestMemoryMmap>,
    host: usize,
    len: usize,
}

#[pymethods]
impl MemoryWindow {
    /// # Safety
    /// Called by CPython's buffer protocol with a valid `view`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        // SAFETY: `host..host + len` lies inside a guest RAM mapping that `_ram`
        // keeps mapped for as long as this object, which the view references, lives.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                this.host as *mut std::os::raw::c_void,
                this.len as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(PyErr::fetch(slf.py()))
        }
    }
}
