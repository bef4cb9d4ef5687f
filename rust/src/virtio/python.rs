//! The Python handles of the virtio devices, in `pyfastvm.devices`: each is a
//! built-in device whose Rust transport goes on the MMIO bus.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;

use super::blk::Blk;
use super::mmio::MmioTransport;
use super::rng::Rng;
use super::vsock::Vsock;
use super::{VirtioDevice, MMIO_WINDOW};
use crate::devices::{initializer, BuiltinDevice};
use crate::error::Result;

/// The base-class part of a handle: the transport around `device`.
fn transport(
    device: Arc<dyn VirtioDevice>,
) -> Result<(PyClassInitializer<BuiltinDevice>, Arc<MmioTransport>)> {
    let transport = Arc::new(MmioTransport::new(device)?);
    Ok((initializer(transport.clone()), transport))
}

/// `pyfastvm.devices.VirtioBlk(path, read_only=False)`: a disk backed by the
/// raw image at `path`. Add it with `vm.add_mmio_device(None, WINDOW, disk,
/// gsi=vm.allocate_gsi())`.
#[pyclass(extends = BuiltinDevice, frozen, module = "pyfastvm.devices", name = "VirtioBlk")]
pub struct PyVirtioBlk {
    blk: Arc<Blk>,
    transport: Arc<MmioTransport>,
}

#[pymethods]
impl PyVirtioBlk {
    #[new]
    #[pyo3(signature = (path, *, read_only = false))]
    fn py_new(path: PathBuf, read_only: bool) -> Result<PyClassInitializer<Self>> {
        let blk = Arc::new(Blk::open(&path, read_only)?);
        let (base, transport) = self::transport(blk.clone())?;
        Ok(base.add_subclass(PyVirtioBlk { blk, transport }))
    }

    /// The MMIO window a virtio-mmio device takes.
    #[classattr]
    const WINDOW: u64 = MMIO_WINDOW;

    #[getter]
    fn path(&self) -> PathBuf {
        self.blk.path().to_owned()
    }

    #[getter]
    fn read_only(&self) -> bool {
        self.blk.read_only()
    }

    /// The disk's size in bytes, as the guest sees it.
    #[getter]
    fn capacity(&self) -> u64 {
        self.blk.capacity_bytes()
    }

    /// Whether the guest may discard (the image's filesystem punches holes).
    #[getter]
    fn discard(&self) -> bool {
        self.blk.discard()
    }

    /// Reads the image's size again after it grew or shrank; the guest is
    /// told by a config-change interrupt. True if the size changed.
    fn refresh_capacity(&self) -> Result<bool> {
        let changed = self.blk.refresh_capacity()?;
        if changed {
            self.transport.config_changed()?;
        }
        Ok(changed)
    }
}

/// `pyfastvm.devices.VirtioRng()`: an entropy source fed from the host's
/// getrandom; the guest's /dev/hwrng.
#[pyclass(extends = BuiltinDevice, frozen, module = "pyfastvm.devices", name = "VirtioRng")]
pub struct PyVirtioRng;

#[pymethods]
impl PyVirtioRng {
    #[new]
    fn py_new() -> Result<PyClassInitializer<Self>> {
        let (base, _) = transport(Arc::new(Rng))?;
        Ok(base.add_subclass(PyVirtioRng))
    }

    #[classattr]
    const WINDOW: u64 = MMIO_WINDOW;
}

/// `pyfastvm.devices.VirtioVsock(cid, path)`: a vsock device whose host side
/// is Unix sockets, as Firecracker's: a host program connects to `path` and
/// writes `CONNECT <port>\n` to reach guest port `port` (the answer is
/// `OK <host port>\n`); a guest connection to host (CID 2) port P reaches
/// the listener at `<path>_P`.
#[pyclass(extends = BuiltinDevice, frozen, module = "pyfastvm.devices", name = "VirtioVsock")]
pub struct PyVirtioVsock {
    vsock: Arc<Vsock>,
}

#[pymethods]
impl PyVirtioVsock {
    #[new]
    fn py_new(cid: u64, path: PathBuf) -> Result<PyClassInitializer<Self>> {
        let vsock = Arc::new(Vsock::new(cid, &path)?);
        let (base, _) = transport(vsock.clone())?;
        Ok(base.add_subclass(PyVirtioVsock { vsock }))
    }

    #[classattr]
    const WINDOW: u64 = MMIO_WINDOW;

    /// The guest's context id.
    #[getter]
    fn cid(&self) -> u64 {
        self.vsock.cid()
    }

    /// The Unix socket host programs connect to.
    #[getter]
    fn path(&self) -> PathBuf {
        self.vsock.path().to_owned()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyVirtioBlk>()?;
    m.add_class::<PyVirtioRng>()?;
    m.add_class::<PyVirtioVsock>()?;
    Ok(())
}
