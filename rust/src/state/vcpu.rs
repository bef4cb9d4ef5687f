//! A vCPU's whole KVM state, saved and restored in the order the kernel
//! needs. The vCPU must not be running, and any exit it stopped at must be
//! completed first (crate::vcpu does that before calling in here).

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, kvm_xsave2, CpuId, Xsave, KVM_MAX_CPUID_ENTRIES,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::host::{host_support, HostSupport};
use super::{msrs, needs_part, unless_absent};
use crate::error::{Error, Result};
use crate::regs::Fpu;

/// 32-bit words in the legacy 4096-byte struct kvm_xsave.
const XSAVE_REGION_WORDS: usize = std::mem::size_of::<kvm_xsave>() / 4;

/// Everything KVM keeps for one vCPU. Options are what a host may lack:
/// None records that it was not there to save.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    /// KVM_MP_STATE_* (0 runnable, 1 waiting for INIT, 3 halted, ...).
    pub mp_state: u32,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The XSAVE area as 32-bit words: struct kvm_xsave's region, then the
    /// words past it that KVM_CAP_XSAVE2 asks for. None without KVM_CAP_XSAVE.
    pub xsave: Option<Vec<u32>>,
    /// x87 and SSE state (KVM_GET_FPU), saved only when XSAVE is not.
    pub fpu: Option<Fpu>,
    /// None without KVM_CAP_XCRS.
    pub xcrs: Option<kvm_xcrs>,
    pub debugregs: kvm_debugregs,
    /// None without the in-kernel irqchip.
    pub lapic: Option<kvm_lapic_state>,
    /// None without KVM_CAP_GET_TSC_KHZ.
    pub tsc_khz: Option<u32>,
    /// What KVM_SET_CPUID2 gave the vCPU.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// {index: value} for every MSR KVM lists for saving and reads back.
    pub msrs: BTreeMap<u32, u64>,
    /// Listed MSRs KVM refused to read on this vCPU; not restored.
    pub unreadable_msrs: Vec<u32>,
    pub vcpu_events: kvm_vcpu_events,
}

/// Reads the vCPU's state. The order is the kernel's, not ours to choose.
pub fn save(fd: &VcpuFd) -> Result<VcpuState> {
    let host = host_support()?;
    // MP state first: reading it makes the local APIC accept pending INIT
    // and SIPI events, which change the registers and APIC read below.
    let mp_state = fd
        .get_mp_state()
        .map_err(Error::kvm("KVM_GET_MP_STATE"))?
        .mp_state;
    let regs = fd.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    let (xsave, fpu) = save_fpu(fd, host)?;
    let xcrs = host
        .xcrs
        .then(|| fd.get_xcrs().map_err(Error::kvm("KVM_GET_XCRS")))
        .transpose()?;
    let debugregs = fd
        .get_debug_regs()
        .map_err(Error::kvm("KVM_GET_DEBUGREGS"))?;
    // EINVAL is KVM's answer for a vCPU without an in-kernel local APIC.
    let lapic = unless_absent(fd.get_lapic(), "KVM_GET_LAPIC", libc::EINVAL)?;
    let tsc_khz = host
        .tsc_khz
        .then(|| fd.get_tsc_khz().map_err(Error::kvm("KVM_GET_TSC_KHZ")))
        .transpose()?;
    let cpuid = read_cpuid(fd)?;
    let msrs = msrs::read_all(fd, &host.msr_indices)?;
    // Events last: the pending exception, interrupt and NMI it records
    // include what the reads above may have moved there.
    let vcpu_events = fd
        .get_vcpu_events()
        .map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        mp_state,
        regs,
        sregs,
        xsave,
        fpu,
        xcrs,
        debugregs,
        lapic,
        tsc_khz,
        cpuid,
        msrs: msrs.values,
        unreadable_msrs: msrs.refused,
        vcpu_events,
    })
}

/// Writes a saved state into a vCPU, in the order the kernel needs.
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<()> {
    let host = host_support()?;
    // CPUID first: KVM checks CR4 bits, XCR0, XSAVE features and MSRs
    // against the guest's CPUID when they are set.
    let cpuid = CpuId::from_entries(&state.cpuid)
        .map_err(|_| Error::Argument(format!("too many CPUID entries: {}", state.cpuid.len())))?;
    fd.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    // The TSC rate before the MSRs: KVM scales the IA32_TSC written below by it.
    restore_tsc_khz(fd, host, state.tsc_khz)?;
    fd.set_mp_state(kvm_mp_state {
        mp_state: state.mp_state,
    })
    .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
    // Registers before the events: KVM_SET_REGS drops a pending exception.
    fd.set_regs(&state.regs)
        .map_err(Error::kvm("KVM_SET_REGS"))?;
    // Before the LAPIC: the APIC base in sregs decides the APIC's mode.
    fd.set_sregs(&state.sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;
    restore_fpu(fd, host, state)?;
    if let Some(xcrs) = &state.xcrs {
        fd.set_xcrs(xcrs).map_err(Error::kvm("KVM_SET_XCRS"))?;
    }
    fd.set_debug_regs(&state.debugregs)
        .map_err(Error::kvm("KVM_SET_DEBUGREGS"))?;
    // Before the MSRs: KVM takes a TSC deadline only from a local APIC
    // whose timer is in TSC-deadline mode.
    if let Some(lapic) = &state.lapic {
        fd.set_lapic(lapic).map_err(needs_part(
            "KVM_SET_LAPIC",
            libc::EINVAL,
            "vm.create_irqchip()",
        ))?;
    }
    msrs::write_all(fd, &state.msrs)?;
    // Events last, with the flags that make KVM take the pending NMI and
    // the SIPI vector too: KVM_GET_VCPU_EVENTS never sets the SIPI one, and
    // older kernels not the NMI one.
    let mut events = state.vcpu_events;
    events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    fd.set_vcpu_events(&events)
        .map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))?;
    pause_kvmclock(fd, host)
}

/// Tells a guest using kvmclock that it was paused, so its soft-lockup
/// watchdog does not take the gap for a hang. KVM refuses (EINVAL) when the
/// guest has not enabled kvmclock: then there is nobody to tell.
/// The vCPU's CPUID leaves (KVM_GET_CPUID2). Older kernels (Debian 12's
/// 6.1 among them) leave `nent` at the caller's count on success, so the unwritten tail of the
/// zeroed buffer reads as all-zero entries; a leaf KVM holds is never all
/// zero (leaf 0 names the vendor), so that tail is cut off.
pub fn read_cpuid(fd: &VcpuFd) -> Result<Vec<kvm_cpuid_entry2>> {
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_CPUID2"))?;
    let entries = cpuid.as_slice();
    let written = entries
        .iter()
        .rposition(|entry| *entry != kvm_cpuid_entry2::default())
        .map_or(0, |last| last + 1);
    Ok(entries[..written].to_vec())
}

fn pause_kvmclock(fd: &VcpuFd, host: &HostSupport) -> Result<()> {
    if !host.kvmclock_ctrl {
        return Ok(());
    }
    match fd.kvmclock_ctrl() {
        Err(e) if e.errno() == libc::EINVAL => Ok(()),
        other => other.map_err(Error::kvm("KVM_KVMCLOCK_CTRL")),
    }
}

fn restore_tsc_khz(fd: &VcpuFd, host: &HostSupport, saved: Option<u32>) -> Result<()> {
    let Some(saved) = saved else { return Ok(()) };
    let current = host
        .tsc_khz
        .then(|| fd.get_tsc_khz().map_err(Error::kvm("KVM_GET_TSC_KHZ")))
        .transpose()?;
    if current == Some(saved) {
        return Ok(());
    }
    fd.set_tsc_khz(saved).map_err(Error::kvm(
        "KVM_SET_TSC_KHZ (the saved vCPU's TSC rate differs from this host's)",
    ))
}

/// The XSAVE area where the host has KVM_CAP_XSAVE, else the legacy FPU state.
fn save_fpu(fd: &VcpuFd, host: &HostSupport) -> Result<(Option<Vec<u32>>, Option<Fpu>)> {
    let Some(size) = host.xsave_size else {
        let fpu = fd.get_fpu().map_err(Error::kvm("KVM_GET_FPU"))?;
        return Ok((None, Some(Fpu::from(&fpu))));
    };
    if size == std::mem::size_of::<kvm_xsave>() {
        let xsave = fd.get_xsave().map_err(Error::kvm("KVM_GET_XSAVE"))?;
        return Ok((Some(xsave.region.to_vec()), None));
    }
    let mut xsave = Xsave::new(size.div_ceil(4) - XSAVE_REGION_WORDS)
        .map_err(|e| Error::Argument(format!("XSAVE area of {size} bytes: {e:?}")))?;
    // SAFETY: `xsave` holds the `size` bytes KVM_CAP_XSAVE2 says
    // KVM_GET_XSAVE2 writes.
    unsafe { fd.get_xsave2(&mut xsave) }.map_err(Error::kvm("KVM_GET_XSAVE2"))?;
    let mut words = xsave.as_fam_struct_ref().xsave.region.to_vec();
    words.extend_from_slice(xsave.as_slice());
    Ok((Some(words), None))
}

fn restore_fpu(fd: &VcpuFd, host: &HostSupport, state: &VcpuState) -> Result<()> {
    match (&state.xsave, host.xsave_size, &state.fpu) {
        (Some(words), Some(size), _) => restore_xsave(fd, words, size),
        (None, _, Some(fpu)) => fd
            .set_fpu(&fpu.to_kvm()?)
            .map_err(Error::kvm("KVM_SET_FPU")),
        (Some(_), None, _) => Err(Error::Argument(
            "this vCPU state has an XSAVE area, and this host's KVM lacks KVM_CAP_XSAVE".into(),
        )),
        (None, _, None) => Err(Error::Argument(
            "this vCPU state has neither an XSAVE area nor FPU state".into(),
        )),
    }
}

fn restore_xsave(fd: &VcpuFd, words: &[u32], host_size: usize) -> Result<()> {
    if words.len() * 4 < host_size {
        return Err(Error::Argument(format!(
            "this vCPU state's XSAVE area has {} bytes; this host's KVM reads {host_size}",
            words.len() * 4
        )));
    }
    let Some((region, extra)) = words.split_first_chunk::<XSAVE_REGION_WORDS>() else {
        return Err(Error::Argument(
            "this vCPU state's XSAVE area is too short".into(),
        ));
    };
    let header = kvm_xsave2 {
        len: 0,
        xsave: kvm_xsave {
            region: *region,
            ..Default::default()
        },
    };
    let mut xsave =
        Xsave::from_header(header).map_err(|e| Error::Argument(format!("XSAVE area: {e:?}")))?;
    for &word in extra {
        xsave
            .push(word)
            .map_err(|e| Error::Argument(format!("XSAVE area: {e:?}")))?;
    }
    // SAFETY: the buffer holds at least the host's XSAVE size, which is all
    // KVM_SET_XSAVE reads.
    unsafe { fd.set_xsave2(&xsave) }.map_err(Error::kvm("KVM_SET_XSAVE"))
}
