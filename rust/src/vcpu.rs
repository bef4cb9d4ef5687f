//! A vCPU: its register state, and the KVM_RUN loop that dispatches PIO and
//! MMIO exits to the buses without leaving Rust.

use std::collections::BTreeMap;
use std::ptr::addr_of_mut;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    kvm_msr_entry, kvm_run, Msrs, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use pyo3::prelude::*;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::bus::AddressSpace;
use crate::devices::IoAction;
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::regs::{CpuidEntry, Fpu, Regs, Sregs};
use crate::vm::Machine;

/// Real-time signal that kicks a vCPU thread out of KVM_RUN (offset from SIGRTMIN).
const KICK_SIGNAL_OFFSET: i32 = 7;

fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler for the kick signal; its only job is to make
/// KVM_RUN return EINTR. Without SA_RESTART, so the ioctl is not resumed.
pub fn install_kick_handler() -> Result<()> {
    register_signal_handler(kick_signal(), ignore_kick).map_err(|e| Error::Kvm {
        op: "installing the vCPU kick signal handler",
        source: e,
    })
}

/// The vCPU's kvm_run area, shared so other threads can set `immediate_exit`.
struct RunArea(*mut kvm_run);

// SAFETY: the pointer targets the kvm_run mmap owned by the VcpuFd stored next
// to it in `VcpuShared`, so it is valid for as long as the RunArea; other
// threads only touch the `immediate_exit` byte, atomically.
unsafe impl Send for RunArea {}
// SAFETY: as above.
unsafe impl Sync for RunArea {}

impl RunArea {
    fn immediate_exit(&self) -> &AtomicU8 {
        // SAFETY: `immediate_exit` is a u8 inside the live kvm_run mapping; all
        // our accesses to it go through this atomic, and KVM only reads it.
        unsafe { AtomicU8::from_ptr(addr_of_mut!((*self.0).immediate_exit)) }
    }

    /// The access size of the current KVM_EXIT_IO (1, 2 or 4).
    fn io_size(&self) -> usize {
        // SAFETY: read right after KVM_RUN returned KVM_EXIT_IO, when the
        // kernel has filled the `io` member of the union.
        usize::from(unsafe { (*self.0).__bindgen_anon_1.io.size }).max(1)
    }

    fn exit_reason(&self) -> u32 {
        // SAFETY: a plain u32 the kernel sets on every exit.
        unsafe { (*self.0).exit_reason }
    }

    /// Details of the current KVM_EXIT_INTERNAL_ERROR.
    fn internal_error(&self) -> Exit {
        // SAFETY: read right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR,
        // when the kernel has filled the `internal` member of the union.
        let internal = unsafe { (*self.0).__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let data = internal.data[..ndata].to_vec();
        // SAFETY: `emulation_failure` overlays `internal` with the same prefix.
        let failure = unsafe { (*self.0).__bindgen_anon_1.emulation_failure };
        let has_bytes = u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
        let instruction = (internal.suberror == KVM_INTERNAL_ERROR_EMULATION
            && failure.flags & has_bytes != 0)
            .then(|| {
                // SAFETY: the flag says the instruction bytes are present.
                let insn = unsafe { failure.__bindgen_anon_1.__bindgen_anon_1 };
                insn.insn_bytes[..usize::from(insn.insn_size).min(15)].to_vec()
            });
        Exit::internal_error(internal.suberror, data, instruction)
    }
}

/// The state of one vCPU shared by its Python handle and its VM.
pub struct VcpuShared {
    pub index: u32,
    fd: Mutex<VcpuFd>,
    run_area: RunArea,
    stop_requested: AtomicBool,
    /// The thread inside `run()`, to signal it; None when not running.
    thread: Mutex<Option<libc::pthread_t>>,
    machine: Arc<Machine>,
}

impl VcpuShared {
    pub fn new(index: u32, mut fd: VcpuFd, machine: Arc<Machine>) -> Self {
        let run_area = RunArea(fd.get_kvm_run());
        VcpuShared {
            index,
            fd: Mutex::new(fd),
            run_area,
            stop_requested: AtomicBool::new(false),
            thread: Mutex::new(None),
            machine,
        }
    }

    /// Asks the vCPU to leave KVM_RUN: `immediate_exit` covers a thread about
    /// to enter, the signal one already inside. A stop requested while the
    /// vCPU is idle ends its next `run()` at once.
    pub fn request_stop(&self) {
        self.stop_requested.store(true, Ordering::SeqCst);
        self.run_area.immediate_exit().store(1, Ordering::SeqCst);
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(thread) = *thread {
            // SAFETY: `thread` is registered only while it is inside `run()`
            // and unregistered under this lock before it leaves, so it is alive.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
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

    /// Runs the guest until something Python must see. Exactly one ioctl,
    /// KVM_RUN, per exit on the PIO/MMIO path.
    fn run_loop(&self, fd: &mut VcpuFd) -> Result<Exit> {
        loop {
            let outcome = match fd.run() {
                Ok(exit) => self.handle_exit(exit),
                Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => self.on_interrupt(),
                Err(source) => Err(Error::Kvm {
                    op: "KVM_RUN",
                    source,
                }),
            };
            if let Some(exit) = outcome? {
                return Ok(exit);
            }
        }
    }

    fn on_interrupt(&self) -> Result<Option<Exit>> {
        self.run_area.immediate_exit().store(0, Ordering::SeqCst);
        if self.stop_requested.swap(false, Ordering::SeqCst) {
            return Ok(Some(Exit::new("stop")));
        }
        // A signal for Python (Ctrl-C's SIGINT) may be why KVM_RUN returned.
        Python::attach(|py| py.check_signals())?;
        Ok(None)
    }

    fn handle_exit(&self, exit: VcpuExit<'_>) -> Result<Option<Exit>> {
        match exit {
            VcpuExit::IoOut(port, data) => {
                let size = self.run_area.io_size();
                self.write_all(AddressSpace::Pio, port.into(), size, data.chunks(size))
            }
            VcpuExit::IoIn(port, data) => {
                let size = self.run_area.io_size();
                self.read_all(AddressSpace::Pio, port.into(), size, data.chunks_mut(size))
            }
            VcpuExit::MmioWrite(address, data) => self.write_all(
                AddressSpace::Mmio,
                address,
                data.len(),
                std::iter::once(data),
            ),
            VcpuExit::MmioRead(address, data) => self.read_all(
                AddressSpace::Mmio,
                address,
                data.len(),
                std::iter::once(data),
            ),
            VcpuExit::Intr => Ok(None),
            VcpuExit::Hlt => Ok(Some(Exit::new("hlt"))),
            VcpuExit::Shutdown => Ok(Some(Exit::new("shutdown"))),
            VcpuExit::FailEntry(reason, _cpu) => Ok(Some(Exit {
                hardware_entry_failure_reason: Some(reason),
                ..Exit::new("fail_entry")
            })),
            VcpuExit::InternalError => Ok(Some(self.run_area.internal_error())),
            VcpuExit::SystemEvent(event_type, data) => Ok(Some(Exit {
                event_type: Some(event_type),
                data: data.to_vec(),
                ..Exit::new("system_event")
            })),
            _ => Ok(Some(Exit {
                exit_reason: Some(self.run_area.exit_reason()),
                ..Exit::new("unhandled")
            })),
        }
    }

    /// Delivers the writes of one exit (several for `rep outs`) to the device
    /// at `address`, stopping early if the device ends the run.
    fn write_all<'a>(
        &self,
        space: AddressSpace,
        address: u64,
        size: usize,
        accesses: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Option<Exit>> {
        let Some((offset, device)) = self.machine.find_device(space, address) else {
            return self.unclaimed(space, "write", address, size);
        };
        for data in accesses {
            if let IoAction::Stop(reason) = device.write(offset, data)? {
                return Ok(Some(Exit::stopped_by(reason, device.name())));
            }
        }
        Ok(None)
    }

    /// Fills the reads of one exit (several for `rep ins`) from the device.
    fn read_all<'a>(
        &self,
        space: AddressSpace,
        address: u64,
        size: usize,
        mut accesses: impl Iterator<Item = &'a mut [u8]>,
    ) -> Result<Option<Exit>> {
        let Some((offset, device)) = self.machine.find_device(space, address) else {
            for data in accesses.by_ref() {
                data.fill(0xff);
            }
            return self.unclaimed(space, "read", address, size);
        };
        for data in accesses {
            if let IoAction::Stop(reason) = device.read(offset, data)? {
                return Ok(Some(Exit::stopped_by(reason, device.name())));
            }
        }
        Ok(None)
    }

    fn unclaimed(
        &self,
        space: AddressSpace,
        access: &'static str,
        address: u64,
        size: usize,
    ) -> Result<Option<Exit>> {
        if self.machine.ignore_unclaimed {
            return Ok(None);
        }
        Err(Error::UnclaimedAccess {
            space: space.name(),
            access,
            address,
            size,
        })
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

    /// Makes a `run()` on another thread return with reason "stop" (or the
    /// next `run()`, if none is in progress).
    fn stop(&self) {
        self.shared.request_stop();
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
            let mut xsave = fd.get_xsave().map_err(Error::kvm("KVM_GET_XSAVE"))?;
            fpu.apply_mxcsr(&mut xsave);
            // SAFETY: KVM reads the 4096 bytes of a kvm_xsave; the state is
            // larger only with dynamic XSTATE features (AMX) that the VMM
            // asked for with arch_prctl, which pyfastvm never does.
            unsafe { fd.set_xsave(&xsave) }.map_err(Error::kvm("KVM_SET_XSAVE"))?;
            fd.set_fpu(&state).map_err(Error::kvm("KVM_SET_FPU"))
        })
    }

    /// Reads the given MSRs; returns {index: value}.
    fn get_msrs(&self, indices: Vec<u32>) -> Result<BTreeMap<u32, u64>> {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = msr_list(&entries)?;
        let read = self
            .shared
            .with_fd(|fd| fd.get_msrs(&mut msrs).map_err(Error::kvm("KVM_GET_MSRS")))?;
        check_msr_count("read", read, &entries)?;
        Ok(msrs.as_slice().iter().map(|e| (e.index, e.data)).collect())
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
            .map_err(|_| Error::Device(format!("too many CPUID entries: {}", raw.len())))?;
        self.shared
            .with_fd(|fd| fd.set_cpuid2(&cpuid).map_err(Error::kvm("KVM_SET_CPUID2")))
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
            return Err(Error::Device(format!(
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

    fn __repr__(&self) -> String {
        format!("Vcpu(index={})", self.shared.index)
    }
}

fn msr_list(entries: &[kvm_msr_entry]) -> Result<Msrs> {
    Msrs::from_entries(entries)
        .map_err(|_| Error::Device(format!("too many MSRs in one call: {}", entries.len())))
}

/// KVM_GET/SET_MSRS stop at the first MSR they refuse; name it.
fn check_msr_count(verb: &'static str, done: usize, entries: &[kvm_msr_entry]) -> Result<()> {
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
