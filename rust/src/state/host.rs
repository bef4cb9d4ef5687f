//! What the host's KVM offers for saving vCPU state. It is a property of the
//! kernel module, the same through every /dev/kvm handle, so it is asked once
//! per process on a handle of its own.

use std::sync::OnceLock;

use kvm_bindings::kvm_xsave;
use kvm_ioctls::{Cap, Kvm};

use crate::error::{Error, Result};

pub struct HostSupport {
    /// The MSRs KVM lists for saving (KVM_GET_MSR_INDEX_LIST), in its order.
    pub msr_indices: Vec<u32>,
    /// Bytes of the XSAVE area (KVM_CAP_XSAVE2, at least the 4096 of
    /// struct kvm_xsave); None without KVM_CAP_XSAVE.
    pub xsave_size: Option<usize>,
    /// KVM_GET_XCRS / KVM_SET_XCRS (KVM_CAP_XCRS).
    pub xcrs: bool,
    /// KVM_GET_TSC_KHZ (KVM_CAP_GET_TSC_KHZ).
    pub tsc_khz: bool,
    /// KVM_KVMCLOCK_CTRL (KVM_CAP_KVMCLOCK_CTRL).
    pub kvmclock_ctrl: bool,
}

static HOST: OnceLock<HostSupport> = OnceLock::new();

pub fn host_support() -> Result<&'static HostSupport> {
    if let Some(host) = HOST.get() {
        return Ok(host);
    }
    let kvm = Kvm::new().map_err(Error::kvm("opening /dev/kvm"))?;
    let msr_indices = kvm
        .get_msr_index_list()
        .map_err(Error::kvm("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec();
    let legacy_size = std::mem::size_of::<kvm_xsave>();
    let xsave_size = kvm.check_extension(Cap::Xsave).then(|| {
        let xsave2 = usize::try_from(kvm.check_extension_int(Cap::Xsave2)).unwrap_or(0);
        xsave2.max(legacy_size)
    });
    let support = HostSupport {
        msr_indices,
        xsave_size,
        xcrs: kvm.check_extension(Cap::Xcrs),
        tsc_khz: kvm.check_extension(Cap::GetTscKhz),
        kvmclock_ctrl: kvm.check_extension(Cap::KvmclockCtrl),
    };
    Ok(HOST.get_or_init(|| support))
}
