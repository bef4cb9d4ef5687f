//! A virtual machine: guest RAM registered with KVM, its devices
//! (device_manager.rs), and its vCPUs.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_msi, kvm_pit_config, kvm_userspace_memory_region, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, VmFd};
use pyo3::prelude::*;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::assist::ExitAssists;
use crate::device_manager::{AddressSpace, DeviceInfo, DeviceManager, Registration};
use crate::devices::{as_device, IoEvent};
use crate::error::{Error, Result};
use crate::kvm::Kvm;
use crate::memory::{self, Backing, PyGuestMemory, Ram};
use crate::state::pyjson;
use crate::state::python::PyVmState;
use crate::vcpu::{Request, Vcpu, VcpuShared};
use crate::worker::WorkerControl;

/// Where KVM_SET_TSS_ADDR puts the three pages Intel's real-mode emulation
/// needs: inside the MMIO hole, below the BIOS ROM, as QEMU and kvmtool do.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// What the vCPU threads share: the VM fd, RAM and the devices. Field order
/// is drop order: the VM fd is closed before the RAM it maps is unmapped.
pub struct VmShared {
    vm_fd: VmFd,
    pub ram: Arc<GuestMemoryMmap>,
    pub devices: RwLock<DeviceManager>,
    pub ignore_unclaimed: bool,
    assists: OnceLock<ExitAssists>,
}

impl VmShared {
    /// The exit assists the host profile chose, once; None before that.
    pub fn assists(&self) -> Option<&ExitAssists> {
        self.assists.get()
    }

    fn devices(&self) -> RwLockReadGuard<'_, DeviceManager> {
        self.devices.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn devices_mut(&self) -> RwLockWriteGuard<'_, DeviceManager> {
        self.devices.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a device and connects its interrupt line, if it has one.
    fn add_device(
        &self,
        py: Python<'_>,
        placement: (AddressSpace, Option<u64>, u64),
        device: &Bound<'_, PyAny>,
        id: Option<String>,
        gsi: Option<u32>,
    ) -> Result<DeviceInfo> {
        let (space, base, length) = placement;
        let rust_device = as_device(device)?;
        let interrupt = rust_device.interrupt_fd();
        let ioevents = rust_device.ioevents();
        rust_device.attach_memory(&self.ram)?;
        let registered = self.devices_mut().add(Registration {
            id,
            space,
            base,
            length,
            gsi,
            device: rust_device,
            handle: Some(device.clone().unbind()),
        })?;
        if let (Some(gsi), Some(fd)) = (gsi, interrupt) {
            self.register_irqfd(fd, gsi)?;
        }
        for event in ioevents {
            self.register_ioeventfd(&event, registered.base)?;
        }
        Ok(DeviceInfo::of(py, &registered))
    }

    /// Routes signals on eventfd `fd` to interrupt line `gsi` inside KVM.
    fn register_irqfd(&self, fd: RawFd, gsi: u32) -> Result<()> {
        let eventfd = own_eventfd(fd, "register_irqfd")?;
        self.vm_fd
            .register_irqfd(&eventfd, gsi)
            .map_err(Error::kvm("KVM_IRQFD"))
    }

    /// Lets KVM complete the guest's write of `event.value` at `event.offset`
    /// from `base` by signalling `event.fd`, without an exit (KVM_IOEVENTFD).
    fn register_ioeventfd(&self, event: &IoEvent, base: u64) -> Result<()> {
        let eventfd = own_eventfd(event.fd, "register_ioeventfd")?;
        let address = IoEventAddress::Mmio(base + event.offset);
        self.vm_fd
            .register_ioevent(&eventfd, &address, event.value)
            .map_err(Error::kvm("KVM_IOEVENTFD"))
    }
}

/// Our own descriptor for the caller's eventfd `fd`, which KVM keeps a
/// reference to once registered; KVM checks that it is an eventfd.
fn own_eventfd(fd: RawFd, what: &str) -> Result<EventFd> {
    // SAFETY: dup gives us our own descriptor for the caller's open file.
    let own = unsafe { libc::dup(fd) };
    if own < 0 {
        return Err(Error::Argument(format!("{what}: fd {fd} is not open")));
    }
    // SAFETY: `own` is a fresh descriptor that nothing else owns.
    Ok(unsafe { EventFd::from_raw_fd(own) })
}

/// Registers every RAM region with KVM, one memory slot each.
fn register_ram(vm_fd: &VmFd, ram: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in ram.iter().enumerate() {
        let host = ram.get_host_address(region.start_addr()).map_err(|e| {
            Error::GuestMemory(format!("guest RAM region has no host mapping: {e}"))
        })?;
        let layout = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes,
        // owned by the VmShared that also owns `vm_fd` and outlives it.
        unsafe { vm_fd.set_user_memory_region(layout) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// A KVM virtual machine with `memory_size` bytes of RAM.
#[pyclass(frozen, module = "pyfastvm")]
pub struct Vm {
    kvm: Py<Kvm>,
    shared: Arc<VmShared>,
    memory: Py<PyGuestMemory>,
    /// The memfd or file behind RAM; closed after the mappings are gone.
    memory_file: Option<File>,
    /// "anonymous", "shared" (a memfd it owns) or "copy_on_write" (a file).
    memory_backing: &'static str,
    gsi_routes: Mutex<Vec<(u32, String, u32)>>,
    vcpus: Mutex<Vec<Arc<VcpuShared>>>,
}

#[pymethods]
impl Vm {
    /// `memory_from`: an open file or memfd whose contents become the guest's
    /// RAM copy-on-write (a snapshot's memory, a template's); `shared_memory`:
    /// RAM on a memfd (`memory_fd`) that other VMs can start from.
    #[new]
    #[pyo3(signature = (
        memory_size, kvm = None, ignore_unclaimed = false, *, memory_from = None,
        shared_memory = false,
    ))]
    fn py_new(
        py: Python<'_>,
        memory_size: u64,
        kvm: Option<Py<Kvm>>,
        ignore_unclaimed: bool,
        memory_from: Option<RawFd>,
        shared_memory: bool,
    ) -> Result<Self> {
        let kvm = match kvm {
            Some(kvm) => kvm,
            None => Py::new(py, Kvm::open("/dev/kvm")?)?,
        };
        let (backing, memory_backing) =
            match (memory_from, shared_memory) {
                (Some(fd), false) => (Backing::CopyOnWrite(memory::dup_file(fd)?), "copy_on_write"),
                (None, true) => (Backing::Memfd, "shared"),
                (None, false) => (Backing::Anonymous, "anonymous"),
                (Some(_), true) => return Err(Error::Argument(
                    "memory_from maps a file privately; shared_memory needs fresh RAM: give one"
                        .into(),
                )),
            };
        let Ram { memory: ram, file } = memory::allocate(memory_size, backing)?;
        let ram = Arc::new(ram);
        let vm_fd = kvm
            .get()
            .kvm
            .create_vm()
            .map_err(Error::kvm("KVM_CREATE_VM"))?;
        vm_fd
            .set_tss_address(TSS_ADDRESS)
            .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        register_ram(&vm_fd, &ram)?;
        let memory = Py::new(py, PyGuestMemory { ram: ram.clone() })?;
        let shared = Arc::new(VmShared {
            vm_fd,
            ram,
            devices: RwLock::new(DeviceManager::new()),
            ignore_unclaimed,
            assists: OnceLock::new(),
        });
        Ok(Vm {
            kvm,
            shared,
            memory,
            memory_file: file,
            memory_backing,
            gsi_routes: Mutex::new(Vec::new()),
            vcpus: Mutex::new(Vec::new()),
        })
    }

    /// The memfd or file behind guest RAM, if it has one: for a VM created
    /// with `shared_memory`, what other VMs start from (`memory_from`).
    #[getter]
    fn memory_fd(&self) -> Option<RawFd> {
        self.memory_file.as_ref().map(|f| f.as_raw_fd())
    }

    /// How guest RAM is backed: "anonymous", "shared" (on `memory_fd`, which
    /// holds the guest's writes) or "copy_on_write" (`memory_fd` holds what
    /// it started from; its writes are its own).
    #[getter]
    fn memory_backing(&self) -> &'static str {
        self.memory_backing
    }

    /// The /dev/kvm handle this VM was created from.
    #[getter]
    fn kvm(&self, py: Python<'_>) -> Py<Kvm> {
        self.kvm.clone_ref(py)
    }

    /// Guest RAM: `read`, `write` and zero-copy `view`.
    #[getter]
    fn memory(&self, py: Python<'_>) -> Py<PyGuestMemory> {
        self.memory.clone_ref(py)
    }

    #[getter]
    fn memory_size(&self) -> u64 {
        self.shared.ram.iter().map(|r| r.len()).sum()
    }

    #[getter]
    fn ignore_unclaimed(&self) -> bool {
        self.shared.ignore_unclaimed
    }

    /// Puts `device` on I/O ports `[base, base + length)` under `id` (by
    /// default its kind's name), with interrupt line `gsi` if it has one: a
    /// device's interrupt eventfd (a built-in's, or a Python device's
    /// `irq_fd`) is then connected to it.
    #[pyo3(signature = (base, length, device, *, id = None, gsi = None))]
    fn add_pio_device(
        &self,
        py: Python<'_>,
        base: u64,
        length: u64,
        device: &Bound<'_, PyAny>,
        id: Option<String>,
        gsi: Option<u32>,
    ) -> Result<DeviceInfo> {
        let placement = (AddressSpace::Pio, Some(base), length);
        self.shared.add_device(py, placement, device, id, gsi)
    }

    /// Puts `device` on guest-physical addresses `[base, base + length)`, or
    /// with `base` None in a free window of the MMIO hole; as add_pio_device.
    #[pyo3(signature = (base, length, device, *, id = None, gsi = None))]
    fn add_mmio_device(
        &self,
        py: Python<'_>,
        base: Option<u64>,
        length: u64,
        device: &Bound<'_, PyAny>,
        id: Option<String>,
        gsi: Option<u32>,
    ) -> Result<DeviceInfo> {
        let placement = (AddressSpace::Mmio, base, length);
        self.shared.add_device(py, placement, device, id, gsi)
    }

    /// A free interrupt line (GSI) for a device to be added.
    fn allocate_gsi(&self) -> Result<u32> {
        self.shared.devices_mut().allocate_gsi()
    }

    /// Every device, in the order they were added.
    #[getter]
    fn devices(&self, py: Python<'_>) -> Vec<DeviceInfo> {
        let manager = self.shared.devices();
        manager
            .devices()
            .iter()
            .map(|d| DeviceInfo::of(py, d))
            .collect()
    }

    /// Lets the VMM complete, on the vCPU threads, the guest work this host's
    /// KVM leaves to user space: any of "syscall", "int3", "fwait" and
    /// "ldmxcsr" (see `pyfastvm.host`). Chosen once per VM, before it runs.
    fn enable_exit_assists(&self, names: Vec<String>) -> Result<()> {
        let assists = ExitAssists::new(&names)?;
        let kvm = self.kvm.get();
        if !assists.is_empty() && !kvm.kvm.check_extension(Cap::SyncRegs) {
            return Err(Error::KvmCapabilities {
                path: kvm.path().to_owned(),
                missing: "KVM_CAP_SYNC_REGS (the exit assists read registers through it)".into(),
            });
        }
        if self.shared.assists.get().is_some() {
            return Err(Error::Argument(
                "this VM's exit assists are already chosen: they are set once, before it runs"
                    .into(),
            ));
        }
        assists.install(&self.shared.vm_fd)?;
        let _ = self.shared.assists.set(assists);
        Ok(())
    }

    /// The names of the exit assists this VM uses, in the order they are asked.
    #[getter]
    fn exit_assists(&self) -> Vec<&'static str> {
        self.shared
            .assists()
            .map(ExitAssists::names)
            .unwrap_or_default()
    }

    /// What the exit assists learned of the guest (e.g. where the SYSCALL
    /// hook is), for a snapshot; {} without assists.
    fn exit_assist_state<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        let state = match self.shared.assists() {
            Some(assists) => assists.save_state()?,
            None => serde_json::Value::Object(Default::default()),
        };
        Ok(pyjson::to_python(py, &state)?)
    }

    /// Gives the exit assists back what `exit_assist_state` returned; after
    /// `enable_exit_assists`, before the guest runs.
    fn restore_exit_assist_state(&self, state: &Bound<'_, PyAny>) -> Result<()> {
        let state = pyjson::from_python(state, "the exit assist state")?;
        match self.shared.assists() {
            Some(assists) => assists.restore_state(&state),
            None if state.as_object().is_some_and(|m| m.is_empty()) => Ok(()),
            None => Err(Error::Argument(
                "this VM has no exit assists to restore a state into: call \
                 enable_exit_assists first, on a host of the snapshot's kind"
                    .into(),
            )),
        }
    }

    /// How often the exit assists did each kind of work, over all vCPUs.
    fn exit_assist_counts(&self) -> BTreeMap<&'static str, u64> {
        self.shared
            .assists()
            .map(ExitAssists::counts)
            .unwrap_or_default()
    }

    /// Creates the in-kernel PIC, IOAPIC and local APICs (KVM_CREATE_IRQCHIP);
    /// before any vCPU is created.
    fn create_irqchip(&self) -> Result<()> {
        self.shared
            .vm_fd
            .create_irq_chip()
            .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))
    }

    /// Creates the in-kernel i8254 PIT, with a dummy speaker port (KVM_CREATE_PIT2).
    fn create_pit(&self) -> Result<()> {
        let config = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.shared
            .vm_fd
            .create_pit2(config)
            .map_err(Error::kvm("KVM_CREATE_PIT2"))
    }

    /// Routes signals on eventfd `fd` to interrupt line `gsi` inside KVM (KVM_IRQFD),
    /// so a device raises its interrupt without an exit.
    fn register_irqfd(&self, fd: RawFd, gsi: u32) -> Result<()> {
        self.shared.register_irqfd(fd, gsi)
    }

    /// Replaces KVM's interrupt routing (KVM_SET_GSI_ROUTING): each route
    /// `(gsi, chip, pin)` sends interrupt line `gsi` to `pin` of `chip`, one
    /// of "pic_master", "pic_slave" or "ioapic". Needs the in-kernel irqchip.
    fn set_gsi_routing(&self, routes: Vec<(u32, String, u32)>) -> Result<()> {
        let entries = routes
            .iter()
            .map(|(gsi, chip, pin)| irqchip_route(*gsi, chip, *pin))
            .collect::<Result<Vec<_>>>()?;
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| Error::Argument(format!("set_gsi_routing: {e:?}")))?;
        self.shared
            .vm_fd
            .set_gsi_routing(&routing)
            .map_err(Error::kvm("KVM_SET_GSI_ROUTING"))?;
        *self
            .gsi_routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = routes;
        Ok(())
    }

    /// The routes last given to `set_gsi_routing` (KVM cannot be asked).
    #[getter]
    fn gsi_routing(&self) -> Vec<(u32, String, u32)> {
        self.gsi_routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sends a message-signalled interrupt (KVM_SIGNAL_MSI): `address` and
    /// `data` as a device would write them (Intel SDM vol. 3A, 11.11), e.g.
    /// an NMI to APIC id 0 with address 0xFEE00000 and data 0x400. Returns
    /// whether a local APIC took it.
    fn signal_msi(&self, address: u64, data: u32) -> Result<bool> {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        let delivered = self
            .shared
            .vm_fd
            .signal_msi(msi)
            .map_err(Error::kvm("KVM_SIGNAL_MSI"))?;
        Ok(delivered > 0)
    }

    /// Raises (`active`) or lowers interrupt line `irq` (KVM_IRQ_LINE).
    fn set_irq_line(&self, irq: u32, active: bool) -> Result<()> {
        self.shared
            .vm_fd
            .set_irq_line(irq, active)
            .map_err(Error::kvm("KVM_IRQ_LINE"))
    }

    /// Creates vCPU `index` (KVM_CREATE_VCPU).
    fn create_vcpu(&self, index: u32) -> Result<Vcpu> {
        let mut vcpus = self.vcpus.lock().unwrap_or_else(PoisonError::into_inner);
        if vcpus.iter().any(|v| v.index == index) {
            return Err(Error::Argument(format!(
                "vCPU {index} already exists in this VM: give each vCPU its own index"
            )));
        }
        let fd = self
            .shared
            .vm_fd
            .create_vcpu(index.into())
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        let shared = Arc::new(VcpuShared::new(index, fd, self.shared.clone()));
        vcpus.push(shared.clone());
        Ok(Vcpu { shared })
    }

    /// Stops every vCPU of this VM (each `run()` returns reason "stopped")
    /// and every device worker thread.
    fn stop(&self) {
        self.request_all(Request::Stop);
        self.shared
            .devices()
            .workers()
            .for_each(WorkerControl::stop);
    }

    /// Pauses every vCPU of this VM at a clean point (each `run()` returns
    /// reason "paused") and parks every device worker thread; `resume()` and
    /// running the vCPUs again go on.
    fn pause(&self, py: Python<'_>) {
        self.request_all(Request::Pause);
        py.detach(|| {
            self.shared
                .devices()
                .workers()
                .for_each(WorkerControl::pause)
        });
    }

    /// Lets the device worker threads go on after `pause()`; the vCPUs go on
    /// when they are run again.
    fn resume(&self) {
        self.shared
            .devices()
            .workers()
            .for_each(WorkerControl::resume);
    }

    /// Saves the in-kernel PICs, I/O APIC, PIT and kvmclock (see
    /// pyfastvm.VmState). Stop the vCPUs first.
    fn save_state(&self) -> Result<PyVmState> {
        crate::state::vm::save(&self.shared.vm_fd).map(PyVmState)
    }

    /// Puts them back: into a VM with the same in-kernel devices created,
    /// before its vCPUs run.
    fn restore_state(&self, state: PyRef<'_, PyVmState>) -> Result<()> {
        crate::state::vm::restore(&self.shared.vm_fd, &state.0)
    }

    fn __repr__(&self) -> String {
        format!("Vm(memory_size={})", self.memory_size())
    }
}

impl Vm {
    fn request_all(&self, request: Request) {
        let vcpus = self.vcpus.lock().unwrap_or_else(PoisonError::into_inner);
        for vcpu in vcpus.iter() {
            vcpu.request(request);
        }
    }
}

fn irqchip_route(gsi: u32, chip: &str, pin: u32) -> Result<kvm_irq_routing_entry> {
    let irqchip = match chip {
        "pic_master" => KVM_IRQCHIP_PIC_MASTER,
        "pic_slave" => KVM_IRQCHIP_PIC_SLAVE,
        "ioapic" => KVM_IRQCHIP_IOAPIC,
        _ => {
            return Err(Error::Argument(format!(
                "set_gsi_routing: unknown interrupt controller {chip:?}; \
                 use \"pic_master\", \"pic_slave\" or \"ioapic\""
            )))
        }
    };
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = irqchip;
    entry.u.irqchip.pin = pin;
    Ok(entry)
}
