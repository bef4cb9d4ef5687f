//! Typed errors of the core, and their mapping onto the Python exception hierarchy.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use thiserror::Error;

create_exception!(
    pyfastvm,
    VmmError,
    PyException,
    "Base of every pyfastvm error."
);
create_exception!(
    pyfastvm,
    KvmUnavailableError,
    VmmError,
    "/dev/kvm cannot be used: missing, no permission, wrong API version or capabilities."
);
create_exception!(pyfastvm, KvmError, VmmError, "A KVM ioctl failed.");
create_exception!(
    pyfastvm,
    GuestMemoryError,
    VmmError,
    "A guest memory access or layout is outside guest RAM."
);
create_exception!(
    pyfastvm,
    BusConflictError,
    VmmError,
    "A device range overlaps a range already registered on the bus."
);
create_exception!(
    pyfastvm,
    UnclaimedAccessError,
    VmmError,
    "The guest accessed a PIO or MMIO address that no device claims."
);
create_exception!(
    pyfastvm,
    DeviceError,
    VmmError,
    "A device is malformed or answered an access wrongly."
);
create_exception!(
    pyfastvm,
    VcpuBusyError,
    VmmError,
    "The vCPU is running on another thread."
);
create_exception!(
    pyfastvm,
    EmulationFailureError,
    VmmError,
    "KVM could not run a guest instruction, and the VMM could not complete it."
);

static INVALID_ARGUMENT_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
/// Defined in Python, as a GuestError.
static HOST_LIMITATION_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `pyfastvm.InvalidArgumentError`: both a VmmError and a ValueError, for
/// arguments that cannot be right whatever the guest does.
pub fn invalid_argument_error(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    let class = INVALID_ARGUMENT_ERROR.get_or_try_init(py, || {
        let bases = PyTuple::new(
            py,
            [py.get_type::<VmmError>(), py.get_type::<PyValueError>()],
        )?;
        let namespace = PyDict::new(py);
        namespace.set_item("__module__", "pyfastvm")?;
        namespace.set_item(
            "__doc__",
            "An argument pyfastvm cannot use: a duplicate vCPU index, a register \
             page of the wrong size, an unknown name. The message says what to pass.",
        )?;
        let class = py
            .get_type::<PyType>()
            .call1(("InvalidArgumentError", bases, namespace))?;
        Ok::<_, PyErr>(class.cast_into::<PyType>()?.unbind())
    })?;
    Ok(class.bind(py))
}

/// Everything that can go wrong in the core.
#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "{path} does not exist, so KVM is not available: load the KVM module \
         (modprobe kvm_intel or modprobe kvm_amd) or build the host kernel with CONFIG_KVM"
    )]
    KvmMissing { path: String },
    #[error(
        "permission denied opening {path}: add your user to the 'kvm' group \
         (sudo usermod -aG kvm $USER, then log in again) or grant access with \
         sudo setfacl -m u:$USER:rw {path}"
    )]
    KvmPermission { path: String },
    #[error("cannot open {path}: {source}")]
    KvmOpen {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} speaks KVM API version {found}; pyfastvm needs version 12")]
    KvmApiVersion { path: String, found: i32 },
    #[error("KVM at {path} lacks required capabilities: {missing}; a newer host kernel is needed")]
    KvmCapabilities { path: String, missing: String },
    #[error("{op} failed: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM refused to {verb} MSR {index:#x} ({done} of {total} done): the host does not support it")]
    MsrRefused {
        verb: &'static str,
        index: u32,
        done: usize,
        total: usize,
    },
    #[error("{0}")]
    GuestMemory(String),
    #[error("{0}")]
    BusConflict(String),
    #[error(
        "guest {access} of {size} byte(s) at {space} address {address:#x} that no device claims: \
         register a device there, or create the Vm with ignore_unclaimed=True to read 0xff and drop writes"
    )]
    UnclaimedAccess {
        space: &'static str,
        access: &'static str,
        address: u64,
        size: usize,
    },
    #[error("{0}")]
    Device(String),
    #[error("vCPU {0} is running on another thread: stop it (vcpu.stop()) before using it here")]
    VcpuBusy(u32),
    /// An argument that cannot be right (a ValueError in Python).
    #[error("{0}")]
    Argument(String),
    /// An exit assist could not complete the guest's work.
    #[error("{0}")]
    Assist(String),
    /// This host's KVM cannot run what the guest needs, even with the assists.
    #[error("{0}")]
    HostLimitation(String),
    /// An exception raised by a Python device, carried with its traceback.
    #[error("{0}")]
    Python(#[from] PyErr),
}

impl Error {
    /// Wraps a failed KVM ioctl with the name of the operation.
    pub fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let message = err.to_string();
        match err {
            Error::KvmMissing { .. }
            | Error::KvmPermission { .. }
            | Error::KvmOpen { .. }
            | Error::KvmApiVersion { .. }
            | Error::KvmCapabilities { .. } => KvmUnavailableError::new_err(message),
            Error::Kvm { .. } | Error::MsrRefused { .. } => KvmError::new_err(message),
            Error::GuestMemory(_) => GuestMemoryError::new_err(message),
            Error::BusConflict(_) => BusConflictError::new_err(message),
            Error::UnclaimedAccess { .. } => UnclaimedAccessError::new_err(message),
            Error::Device(_) => DeviceError::new_err(message),
            Error::VcpuBusy(_) => VcpuBusyError::new_err(message),
            Error::Argument(_) => Python::attach(|py| match invalid_argument_error(py) {
                Ok(class) => PyErr::from_type(class.clone(), message),
                Err(err) => err,
            }),
            Error::Assist(_) => EmulationFailureError::new_err(message),
            Error::HostLimitation(_) => Python::attach(|py| {
                match HOST_LIMITATION_ERROR.import(py, "pyfastvm.errors", "HostLimitationError") {
                    Ok(class) => PyErr::from_type(class.clone(), message),
                    Err(err) => err,
                }
            }),
            Error::Python(err) => err,
        }
    }
}
