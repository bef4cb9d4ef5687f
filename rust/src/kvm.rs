//! The KVM system handle: opening /dev/kvm, the API version and the capabilities we rely on.

use std::ffi::CString;
use std::io;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Cap;
use pyo3::prelude::*;

use crate::error::{Error, Result};
use crate::regs::CpuidEntry;

/// The only KVM API version there has ever been (KVM_GET_API_VERSION).
const KVM_API_VERSION: i32 = 12;

/// Capabilities the VMM cannot work without, checked when /dev/kvm is opened,
/// in the spirit of kvmtool's kvm__check_extensions.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
];

/// An open /dev/kvm.
#[pyclass(frozen, module = "pyfastvm")]
pub struct Kvm {
    pub(crate) kvm: kvm_ioctls::Kvm,
    path: String,
}

impl Kvm {
    pub fn open(path: &str) -> Result<Self> {
        let c_path = CString::new(path)
            .map_err(|_| Error::Argument(format!("KVM path {path:?} contains a NUL byte")))?;
        let kvm = kvm_ioctls::Kvm::new_with_path(&c_path).map_err(|e| open_error(path, e))?;
        let found = kvm.get_api_version();
        if found != KVM_API_VERSION {
            return Err(Error::KvmApiVersion {
                path: path.to_owned(),
                found,
            });
        }
        let missing: Vec<&str> = REQUIRED_CAPS
            .iter()
            .filter(|(cap, _)| !kvm.check_extension(*cap))
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(Error::KvmCapabilities {
                path: path.to_owned(),
                missing: missing.join(", "),
            });
        }
        Ok(Kvm {
            kvm,
            path: path.to_owned(),
        })
    }
}

fn open_error(path: &str, err: kvm_ioctls::Error) -> Error {
    let path = path.to_owned();
    match err.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => Error::KvmMissing { path },
        libc::EACCES | libc::EPERM => Error::KvmPermission { path },
        errno => Error::KvmOpen {
            path,
            source: io::Error::from_raw_os_error(errno),
        },
    }
}

#[pymethods]
impl Kvm {
    #[new]
    #[pyo3(signature = (path = "/dev/kvm"))]
    fn py_new(path: &str) -> Result<Self> {
        Kvm::open(path)
    }

    /// The path this handle was opened from.
    #[getter]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// KVM_GET_API_VERSION (always 12 once opened).
    #[getter]
    fn api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }

    /// KVM_CHECK_EXTENSION for a raw KVM_CAP_* number: 0 when absent, else its value.
    fn check_extension(&self, cap: u32) -> i32 {
        self.kvm.check_extension_raw(cap.into()).max(0)
    }

    /// Size of the per-vCPU shared kvm_run area (KVM_GET_VCPU_MMAP_SIZE).
    #[getter]
    fn vcpu_mmap_size(&self) -> Result<usize> {
        self.kvm
            .get_vcpu_mmap_size()
            .map_err(Error::kvm("KVM_GET_VCPU_MMAP_SIZE"))
    }

    /// The CPUID leaves KVM can present to a guest (KVM_GET_SUPPORTED_CPUID).
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(cpuid.as_slice().iter().map(CpuidEntry::from).collect())
    }

    fn __repr__(&self) -> String {
        format!("Kvm(path={:?})", self.path)
    }
}
