//! A vCPU: its register state, its run loop (run_loop.rs) and how another
//! thread stops it (kick.rs).

mod kick;
mod run_area;
mod run_loop;
mod state;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;
use pyo3::prelude::*;

pub use kick::install_kick_handler;
use kick::kick_signal;
use run_area::RunArea;

use crate::assist::VcpuIoctls;
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::regs::{CpuidEntry, Fpu, Regs, Sregs};
use crate::state::msrs::read_some;
use crate::state::python::PyVcpuState;
use crate::vm::VmShared;

/// What another thread asked of a running vCPU; a stop outranks a pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Request {
    Pause = 1,
    Stop = 2,
}

/// The state of one vCPU shared by its Python handle and its VM.
pub struct VcpuShared {
    pub index: u32,
    fd: Mutex<VcpuFd>,
    run_area: RunArea,
    /// A pending `Request`, or 0.
    request: AtomicU8,
    /// The thread inside `run()`, to signal it; None when not running.
    thread: Mutex<Option<libc::pthread_t>>,
    vm: Arc<VmShared>,
}

impl VcpuShared {
    pub fn new(index: u32, mut fd: VcpuFd, vm: Arc<VmShared>) -> Self {
        let run_area = RunArea(fd.get_kvm_run());
        VcpuShared {
            index,
            fd: Mutex::new(fd),
            run_area,
            request: AtomicU8::new(0),
            thread: Mutex::new(None),
            vm,
        }
    }

    /// Asks the vCPU to leave KVM_RUN: `immediate_exit` covers a thread about
    /// to enter, the signal one already inside. `run()` then returns with
    /// reason "stopped" or "paused"; a request made while the vCPU is idle
    /// ends its next `run()` at once.
    pub fn request(&self, request: Request) {
        self.request.fetch_max(request as u8, Ordering::SeqCst);
        self.run_area.immediate_exit().store(1, Ordering::SeqCst);
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(thread) = *thread {
            // SAFETY: `thread` is registered only while it is inside `run()`
            // and unregistered under this lock before it leaves, so it is alive.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }

    fn take_request(&self) -> Option<Request> {
        match self.request.swap(0, Ordering::SeqCst) {
            1 => Some(Request::Pause),
            2 => Some(Request::Stop),
            _ => None,
        }
    }

    fn set_running_thread(&self, thread: Option<libc::pthread_t>) {
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = thread;
    }

    fn with_fd<T>(&self, f: impl FnOnce(&mut VcpuFd) -> Result<T>) -> Result<T> {
        let mut fd = self
            .fd
            .try_lock()
            .map_err(|_| Error::VcpuBusy(self.index))?;
        f(&mut fd)
    }
}

/// A virtual CPU of a `Vm`, created with `vm.create_vcpu(index)`.
#[pyclass(frozen, module = "pyfastvm")]
pub struct Vcpu {
    pub(crate) shared: Arc<VcpuShared>,
}

#[pymethods]
impl Vcpu {
    /// The vCPU id given to KVM_CREATE_VCPU (its initial APIC id).
    #[getter]
    fn index(&self) -> u32 {
        self.shared.index
    }

    /// Runs the guest with the GIL released until an exit Python must see,
    /// and returns it. Device errors and Ctrl-C propagate as exceptions.
    fn run(&self, py: Python<'_>) -> Result<Exit> {
        // A Ctrl-C that came before KVM_RUN could be interrupted by it.
        py.check_signals()?;
        let shared = &*self.shared;
        shared.with_fd(|fd| {
            py.detach(|| {
                // SAFETY: pthread_self has no preconditions.
                shared.set_running_thread(Some(unsafe { libc::pthread_self() }));
                let outcome = shared.run_loop(fd);
                shared.set_running_thread(None);
                outcome
            })
        })
    }

    /// Makes a `run()` on another thread return with reason "stopped" (or
    /// the next `run()`, if none is in progress).
    fn stop(&self) {
        self.shared.request(Request::Stop);
    }

    /// Makes a `run()` on another thread return with reason "paused" once any
    /// I/O of its last exit is complete: a clean point to save it or to run
    /// it on from.
    fn pause(&self) {
        self.shared.request(Request::Pause);
    }

    /// Tells the guest's kvmclock that the vCPU was paused (KVM_KVMCLOCK_CTRL),
    /// so its watchdogs do not take the gap for a lockup; False when the
    /// guest has no kvmclock to tell.
    fn kvmclock_ctrl(&self) -> Result<bool> {
        self.shared.with_fd(|fd| match fd.kvmclock_ctrl() {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == libc::EINVAL => Ok(false),
            Err(source) => Err(Error::Kvm {
                op: "KVM_KVMCLOCK_CTRL",
                source,
            }),
        })
    }

    fn get_regs(&self) -> Result<Regs> {
        self.shared.with_fd(|fd| {
            let regs = fd.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
            Ok(Regs::from(&regs))
        })
    }

    fn set_regs(&self, regs: PyRef<'_, Regs>) -> Result<()> {
        let regs = (&*regs).into();
        self.shared
            .with_fd(|fd| fd.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS")))
    }

    fn get_sregs(&self, py: Python<'_>) -> Result<Sregs> {
        let sregs = self
            .shared
            .with_fd(|fd| fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS")))?;
        Ok(Sregs::from_kvm(py, &sregs)?)
    }

    fn set_sregs(&self, py: Python<'_>, sregs: PyRef<'_, Sregs>) -> Result<()> {
        let sregs = sregs.to_kvm(py);
        self.shared
            .with_fd(|fd| fd.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS")))
    }

    fn get_fpu(&self) -> Result<Fpu> {
        self.shared.with_fd(|fd| {
            let fpu = fd.get_fpu().map_err(Error::kvm("KVM_GET_FPU"))?;
            let xsave = fd.get_xsave().map_err(Error::kvm("KVM_GET_XSAVE"))?;
            Ok(Fpu::from_kvm(&fpu, &xsave))
        })
    }

    fn set_fpu(&self, fpu: PyRef<'_, Fpu>) -> Result<()> {
        let state = fpu.to_kvm()?;
        self.shared.with_fd(|fd| {
            // MXCSR first; KVM_SET_FPU then writes the rest of the legacy area.
            VcpuIoctls::set_mxcsr(fd, fpu.mxcsr)?;
            fd.set_fpu(&state).map_err(Error::kvm("KVM_SET_FPU"))
        })
    }

    /// Reads the given MSRs; returns {index: value}.
    fn get_msrs(&self, indices: Vec<u32>) -> Result<BTreeMap<u32, u64>> {
        let (read, entries) = self.shared.with_fd(|fd| read_some(fd, &indices))?;
        check_msr_count("read", read, &entries)?;
        Ok(entries.iter().map(|e| (e.index, e.data)).collect())
    }

    /// Writes {index: value} to the MSRs; every one must be accepted.
    fn set_msrs(&self, values: BTreeMap<u32, u64>) -> Result<()> {
        let entries: Vec<kvm_msr_entry> = values
            .iter()
            .map(|(&index, &data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = msr_list(&entries)?;
        let written = self
            .shared
            .with_fd(|fd| fd.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS")))?;
        check_msr_count("write", written, &entries)
    }

    /// Sets the CPUID leaves the guest sees (KVM_SET_CPUID2).
    fn set_cpuid(&self, entries: Vec<PyRef<'_, CpuidEntry>>) -> Result<()> {
        let raw: Vec<_> = entries.iter().map(|e| (&**e).into()).collect();
        let cpuid = kvm_bindings::CpuId::from_entries(&raw)
            .map_err(|_| Error::Argument(format!("too many CPUID entries: {}", raw.len())))?;
        self.shared
            .with_fd(|fd| fd.set_cpuid2(&cpuid).map_err(Error::kvm("KVM_SET_CPUID2")))
    }

    /// The CPUID leaves the guest sees (KVM_GET_CPUID2): as set, with what
    /// KVM keeps up to date (and on KVM on PVM, the host's own feature bits).
    fn get_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        self.shared.with_fd(|fd| {
            let cpuid = crate::state::vcpu::read_cpuid(fd)?;
            Ok(cpuid.iter().map(CpuidEntry::from).collect())
        })
    }

    /// The local APIC's register page (struct kvm_lapic_state), 1024 bytes.
    fn get_lapic(&self) -> Result<Vec<u8>> {
        self.shared.with_fd(|fd| {
            let lapic = fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
            Ok(lapic.regs.iter().map(|&b| b as u8).collect())
        })
    }

    fn set_lapic(&self, regs: &[u8]) -> Result<()> {
        let mut lapic = kvm_bindings::kvm_lapic_state::default();
        if regs.len() != lapic.regs.len() {
            return Err(Error::Argument(format!(
                "set_lapic takes the {}-byte register page, not {} bytes",
                lapic.regs.len(),
                regs.len()
            )));
        }
        for (to, &from) in lapic.regs.iter_mut().zip(regs) {
            *to = from as libc::c_char;
        }
        self.shared
            .with_fd(|fd| fd.set_lapic(&lapic).map_err(Error::kvm("KVM_SET_LAPIC")))
    }

    /// Queues exception `vector` (with `error_code`, if it has one) for delivery
    /// through the guest IDT on the next entry (KVM_SET_VCPU_EVENTS).
    #[pyo3(signature = (vector, error_code = None))]
    fn inject_exception(&self, vector: u8, error_code: Option<u32>) -> Result<()> {
        self.shared.with_fd(|fd| {
            let mut events = fd
                .get_vcpu_events()
                .map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?;
            events.exception.injected = 1;
            events.exception.nr = vector;
            events.exception.has_error_code = u8::from(error_code.is_some());
            events.exception.error_code = error_code.unwrap_or(0);
            events.flags = 0;
            fd.set_vcpu_events(&events)
                .map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))
        })
    }

    /// Translates guest-virtual `gva` through the guest's page tables
    /// (KVM_TRANSLATE); None when it is not mapped.
    fn translate(&self, gva: u64) -> Result<Option<u64>> {
        self.shared.with_fd(|fd| {
            let t = fd.translate_gva(gva).map_err(Error::kvm("KVM_TRANSLATE"))?;
            Ok((t.valid != 0).then_some(t.physical_address))
        })
    }

    /// Saves the whole vCPU state (see pyfastvm.VcpuState), after completing
    /// any PIO or MMIO exit it stopped at. The vCPU must not be running.
    fn save_state(&self) -> Result<PyVcpuState> {
        self.shared.save_state().map(PyVcpuState)
    }

    /// Puts the vCPU in a saved state, e.g. a fresh vCPU of a new Vm.
    fn restore_state(&self, state: PyRef<'_, PyVcpuState>) -> Result<()> {
        self.shared.restore_state(&state.0)
    }

    fn __repr__(&self) -> String {
        format!("Vcpu(index={})", self.shared.index)
    }
}

pub(crate) fn msr_list(entries: &[kvm_msr_entry]) -> Result<Msrs> {
    Msrs::from_entries(entries)
        .map_err(|_| Error::Argument(format!("too many MSRs in one call: {}", entries.len())))
}

/// KVM_GET/SET_MSRS stop at the first MSR they refuse; name it.
pub(crate) fn check_msr_count(
    verb: &'static str,
    done: usize,
    entries: &[kvm_msr_entry],
) -> Result<()> {
    match entries.get(done) {
        None => Ok(()),
        Some(refused) => Err(Error::MsrRefused {
            verb,
            index: refused.index,
            done,
            total: entries.len(),
        }),
    }
}
