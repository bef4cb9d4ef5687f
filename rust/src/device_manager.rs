//! The VM's devices: each registered under an id with its address range on
//! the PIO or MMIO bus (rust-vmm's vm-device buses, typed addresses) and its
//! interrupt line (GSI), in registration order. MMIO windows and GSIs can be
//! allocated (rust-vmm's vm-allocator) instead of chosen, so a device asks
//! for "a window and an interrupt" and gets free ones.

use std::sync::Arc;

use pyo3::prelude::*;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vm_device::bus::{Bus, BusRange, MmioAddress, PioAddress};

use crate::devices::Device;
use crate::error::{Error, Result};
use crate::worker::WorkerControl;

/// Which bus a device sits on; named in errors and in `DeviceInfo.space`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSpace {
    Pio,
    Mmio,
}

impl AddressSpace {
    /// "pio" or "mmio", as `DeviceInfo.space` and `VMConfig` say it.
    pub fn name(self) -> &'static str {
        match self {
            AddressSpace::Pio => "pio",
            AddressSpace::Mmio => "mmio",
        }
    }

    /// "PIO" or "MMIO", as errors say it.
    pub fn label(self) -> &'static str {
        match self {
            AddressSpace::Pio => "PIO",
            AddressSpace::Mmio => "MMIO",
        }
    }
}

/// Where MMIO windows are allocated: the 32-bit hole below the I/O APIC
/// (0xFEC00000), which no PC device of ours uses.
pub const MMIO_WINDOWS_START: u64 = 0xC000_0000;
pub const MMIO_WINDOWS_END: u64 = 0xFEC0_0000;
const MMIO_WINDOW_ALIGN: u64 = 0x1000;
/// GSIs handed out: the I/O APIC pins a PC leaves free of ISA devices (the
/// legacy ones, 0 to 4, stay with the timer, keyboard, cascade and COM ports).
pub const FIRST_FREE_GSI: u32 = 5;
pub const LAST_GSI: u32 = 23;
const PIO_PORTS: u64 = 1 << 16;

/// A device and what the VM knows of it.
pub struct Registered {
    pub id: String,
    /// The device's type: "Serial", "PmTimer", or a Python class's name.
    pub kind: String,
    pub space: AddressSpace,
    pub base: u64,
    pub length: u64,
    pub gsi: Option<u32>,
    pub device: Arc<dyn Device>,
    /// The object registered from Python (a built-in device's handle, or the
    /// Python device itself); None for devices the core adds itself.
    pub handle: Option<Py<PyAny>>,
}

/// What `add` needs to know of a new device.
pub struct Registration {
    pub id: Option<String>,
    pub space: AddressSpace,
    /// None: allocate an MMIO window.
    pub base: Option<u64>,
    pub length: u64,
    pub gsi: Option<u32>,
    pub device: Arc<dyn Device>,
    pub handle: Option<Py<PyAny>>,
}

pub struct DeviceManager {
    devices: Vec<Arc<Registered>>,
    pio: Bus<PioAddress, Arc<Registered>>,
    mmio: Bus<MmioAddress, Arc<Registered>>,
    mmio_windows: AddressAllocator,
    gsis: IdAllocator,
}

impl DeviceManager {
    pub fn new() -> Self {
        DeviceManager {
            devices: Vec::new(),
            pio: Bus::new(),
            mmio: Bus::new(),
            mmio_windows: AddressAllocator::new(
                MMIO_WINDOWS_START,
                MMIO_WINDOWS_END - MMIO_WINDOWS_START,
            )
            .expect("the MMIO window range is valid"),
            gsis: IdAllocator::new(FIRST_FREE_GSI, LAST_GSI).expect("the GSI range is valid"),
        }
    }

    /// Every device, in registration order.
    pub fn devices(&self) -> &[Arc<Registered>] {
        &self.devices
    }

    /// The worker threads' controls of every device that has one.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerControl> {
        self.devices.iter().filter_map(|d| d.device.worker())
    }

    /// The device claiming `address`, with the offset of `address` in its range.
    #[inline]
    pub fn find(&self, space: AddressSpace, address: u64) -> Option<(u64, &Arc<Registered>)> {
        match space {
            AddressSpace::Pio => {
                let port = PioAddress(u16::try_from(address).ok()?);
                let (range, device) = self.pio.device(port)?;
                Some((u64::from(port.0 - range.base().0), device))
            }
            AddressSpace::Mmio => {
                let (range, device) = self.mmio.device(MmioAddress(address))?;
                Some((address - range.base().0, device))
            }
        }
    }

    /// A free interrupt line for a device to be added.
    pub fn allocate_gsi(&mut self) -> Result<u32> {
        loop {
            let gsi = self.gsis.allocate_id().map_err(|_| {
                Error::Argument(format!(
                    "no free interrupt line is left: GSIs {FIRST_FREE_GSI} to {LAST_GSI} are taken"
                ))
            })?;
            if !self.devices.iter().any(|d| d.gsi == Some(gsi)) {
                return Ok(gsi);
            }
        }
    }

    /// Registers a device; its id must be new and its range free.
    pub fn add(&mut self, new: Registration) -> Result<Arc<Registered>> {
        let kind = new.device.kind();
        let id = match new.id {
            Some(id) => self.check_new_id(id)?,
            None => self.default_id(&kind),
        };
        let base = match new.base {
            Some(base) => base,
            None => self.allocate_window(&id, new.length)?,
        };
        check_range(new.space, base, new.length, &id)?;
        let registered = Arc::new(Registered {
            id,
            kind,
            space: new.space,
            base,
            length: new.length,
            gsi: new.gsi,
            device: new.device,
            handle: new.handle,
        });
        self.claim(&registered)?;
        self.devices.push(registered.clone());
        Ok(registered)
    }

    fn check_new_id(&self, id: String) -> Result<String> {
        if id.is_empty() || self.devices.iter().any(|d| d.id == id) {
            return Err(Error::Argument(format!(
                "a device id must be unique and not empty, and {id:?} is not: give another id="
            )));
        }
        Ok(id)
    }

    /// The kind's name, with a number once the name is taken.
    fn default_id(&self, kind: &str) -> String {
        (1..)
            .map(|n| match n {
                1 => kind.to_owned(),
                _ => format!("{kind}-{n}"),
            })
            .find(|id| self.devices.iter().all(|d| &d.id != id))
            .expect("some numbered id is free")
    }

    fn allocate_window(&mut self, id: &str, length: u64) -> Result<u64> {
        let window = self
            .mmio_windows
            .allocate(length, MMIO_WINDOW_ALIGN, AllocPolicy::FirstMatch)
            .map_err(|e| {
                Error::BusConflict(format!(
                    "no MMIO window of {length:#x} bytes for device {id:?} between \
                     {MMIO_WINDOWS_START:#x} and {MMIO_WINDOWS_END:#x}: {e}"
                ))
            })?;
        Ok(window.start())
    }

    /// Puts the device on its bus, and keeps a fixed MMIO range out of the
    /// windows still to be allocated.
    fn claim(&mut self, device: &Arc<Registered>) -> Result<()> {
        if let Some(held) = self.overlapping(device) {
            return Err(Error::BusConflict(format!(
                "{} range {:#x}-{:#x} for {:?} overlaps {:#x}-{:#x} held by {:?}: pick a free range",
                device.space.label(),
                device.base,
                device.base + device.length - 1,
                device.id,
                held.base,
                held.base + held.length - 1,
                held.id
            )));
        }
        let registered = match device.space {
            AddressSpace::Pio => {
                BusRange::new(PioAddress(device.base as u16), device.length as u16)
                    .and_then(|range| self.pio.register(range, device.clone()))
            }
            AddressSpace::Mmio => BusRange::new(MmioAddress(device.base), device.length)
                .and_then(|range| self.mmio.register(range, device.clone())),
        };
        registered.map_err(|e| Error::BusConflict(format!("{:?}: {e:?}", device.id)))?;
        if device.space == AddressSpace::Mmio && self.in_windows(device) {
            // Taken already if it is the window allocate_window just gave out.
            let _ =
                self.mmio_windows
                    .allocate(device.length, 1, AllocPolicy::ExactMatch(device.base));
        }
        Ok(())
    }

    fn in_windows(&self, device: &Registered) -> bool {
        device.base >= MMIO_WINDOWS_START && device.base + device.length <= MMIO_WINDOWS_END
    }

    fn overlapping(&self, new: &Registered) -> Option<&Arc<Registered>> {
        let end = new.base + new.length;
        self.devices
            .iter()
            .find(|d| d.space == new.space && d.base < end && new.base < d.base + d.length)
    }
}

/// `vm.devices`: a registered device as Python sees it.
#[pyclass(frozen, get_all, module = "pyfastvm")]
pub struct DeviceInfo {
    /// Unique in its VM; names the device in exits and errors.
    pub id: String,
    /// "Serial", "PmTimer", ... or a Python device's class name.
    pub kind: String,
    /// "pio" or "mmio".
    pub space: &'static str,
    pub base: u64,
    pub length: u64,
    /// Its interrupt line, if it has one.
    pub gsi: Option<u32>,
    /// The object that was registered.
    pub device: Option<Py<PyAny>>,
}

impl DeviceInfo {
    pub fn of(py: Python<'_>, registered: &Registered) -> Self {
        DeviceInfo {
            id: registered.id.clone(),
            kind: registered.kind.clone(),
            space: registered.space.name(),
            base: registered.base,
            length: registered.length,
            gsi: registered.gsi,
            device: registered.handle.as_ref().map(|h| h.clone_ref(py)),
        }
    }
}

#[pymethods]
impl DeviceInfo {
    fn __repr__(&self) -> String {
        let gsi = self.gsi.map(|g| format!(", gsi={g}")).unwrap_or_default();
        format!(
            "DeviceInfo(id={:?}, kind={:?}, {} {:#x}+{:#x}{gsi})",
            self.id, self.kind, self.space, self.base, self.length
        )
    }
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

/// A range that is not empty, does not wrap, and fits its bus.
fn check_range(space: AddressSpace, base: u64, length: u64, id: &str) -> Result<()> {
    let end = base.checked_add(length).filter(|_| length > 0);
    let fits = match space {
        AddressSpace::Pio => end.is_some_and(|end| end <= PIO_PORTS),
        AddressSpace::Mmio => end.is_some(),
    };
    if !fits {
        return Err(Error::BusConflict(format!(
            "{} range at {base:#x} with length {length:#x} for {id:?} is empty, wraps around \
             or goes past the bus's end (x86 I/O ports are 16-bit)",
            space.label()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Sink;

    fn sink(space: AddressSpace, base: Option<u64>, length: u64) -> Registration {
        Registration {
            id: None,
            space,
            base,
            length,
            gsi: None,
            device: Arc::new(Sink),
            handle: None,
        }
    }

    fn manager_with(ranges: &[(u64, u64)]) -> Result<DeviceManager> {
        let mut manager = DeviceManager::new();
        for &(base, length) in ranges {
            manager.add(sink(AddressSpace::Pio, Some(base), length))?;
        }
        Ok(manager)
    }

    #[test]
    fn finds_the_device_and_the_offset() {
        let manager = manager_with(&[(0x3f8, 8), (0x80, 1)]).unwrap();
        assert_eq!(
            manager.find(AddressSpace::Pio, 0x3fa).map(|(o, _)| o),
            Some(2)
        );
        assert_eq!(
            manager.find(AddressSpace::Pio, 0x80).map(|(o, _)| o),
            Some(0)
        );
        assert!(manager.find(AddressSpace::Pio, 0x400).is_none());
        assert!(manager.find(AddressSpace::Mmio, 0x3f8).is_none());
    }

    #[test]
    fn refuses_overlaps_empty_ranges_and_ports_past_64k() {
        assert!(manager_with(&[(0x10, 0x10), (0x18, 4)]).is_err());
        assert!(manager_with(&[(0x10, 0x10), (0x08, 0x10)]).is_err());
        assert!(manager_with(&[(0x10, 0x10), (0x20, 0x10), (0x00, 0x10)]).is_ok());
        assert!(manager_with(&[(0x10, 0)]).is_err());
        assert!(manager_with(&[(0xfff0, 0x20)]).is_err());
    }

    #[test]
    fn ids_are_unique_and_default_to_the_kind() {
        let mut manager = manager_with(&[(0x10, 1), (0x20, 1)]).unwrap();
        let ids: Vec<&str> = manager.devices().iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["Sink", "Sink-2"]);
        let mut named = sink(AddressSpace::Pio, Some(0x30), 1);
        named.id = Some("Sink".into());
        assert!(manager.add(named).is_err());
    }

    #[test]
    fn windows_are_allocated_around_fixed_ranges() {
        let mut manager = DeviceManager::new();
        manager
            .add(sink(AddressSpace::Mmio, Some(MMIO_WINDOWS_START), 0x10))
            .unwrap();
        let first = manager.add(sink(AddressSpace::Mmio, None, 0x200)).unwrap();
        let second = manager.add(sink(AddressSpace::Mmio, None, 0x200)).unwrap();
        assert_eq!(first.base, MMIO_WINDOWS_START + MMIO_WINDOW_ALIGN);
        assert_eq!(second.base, first.base + MMIO_WINDOW_ALIGN);
    }

    #[test]
    fn gsis_are_allocated_from_the_free_pins() {
        let mut manager = DeviceManager::new();
        let mut fixed = sink(AddressSpace::Pio, Some(0x10), 1);
        fixed.gsi = Some(FIRST_FREE_GSI);
        manager.add(fixed).unwrap();
        assert_eq!(manager.allocate_gsi().unwrap(), FIRST_FREE_GSI + 1);
        for _ in FIRST_FREE_GSI + 2..=LAST_GSI {
            manager.allocate_gsi().unwrap();
        }
        assert!(manager.allocate_gsi().is_err());
    }
}
