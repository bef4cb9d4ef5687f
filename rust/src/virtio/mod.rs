//! virtio devices (virtio 1.2) on the virtio-mmio transport, with rust-vmm's
//! virtio-queue for the split virtqueues.
//!
//! The layers, one concept each:
//! - `mmio.rs`: the transport: the register layout of section 4.2.2, feature
//!   negotiation, device status and reset, config space; it is the `Device`
//!   on the MMIO bus.
//! - `interrupt.rs`: the interrupt status register and its eventfd (KVM_IRQFD).
//! - `event_loop.rs`: the device's own thread: queue notifications arrive on
//!   eventfds that KVM signals (KVM_IOEVENTFD on QueueNotify), so a vCPU never
//!   waits for a device's work.
//! - `blk.rs`, `rng.rs`, `vsock/`: the devices, each a `VirtioDevice` whose
//!   `QueueHandler` does the queue work on that thread.
//! - `python.rs`: their Python handles.
//!
//! A device written in Python can plug in later as one more `VirtioDevice`:
//! an adapter holding the Python object, answering `device_type`,
//! `queue_sizes`, `features` and the config space from its attributes, and
//! whose `QueueHandler` takes the GIL on the device thread to call the
//! object's `queue_notified(index, chains)` with the popped descriptor chains
//! as guest-memory views (`vm.memory.view`), adding them to the used ring
//! with the lengths it returns. The transport, ioeventfds, interrupts, pause
//! and stop stay as they are.

mod blk;
mod event_loop;
mod interrupt;
mod mmio;
mod python;
mod rng;
mod vsock;

pub use python::register;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

pub use event_loop::Context;

use crate::error::Result;

/// The window a virtio-mmio device takes on the MMIO bus: its registers
/// (0x000-0x0FF) and its config space (from 0x100), a page.
pub const MMIO_WINDOW: u64 = 0x1000;

/// A virtio device behind the transport: what it is, what it offers, its
/// config space, and the queue work once the driver has set it up.
pub trait VirtioDevice: Send + Sync {
    /// The device's type as ids and errors name it: "VirtioBlk", ...
    fn kind(&self) -> &'static str;

    /// The virtio device id (virtio 1.2, 5): 2 for a block device, ...
    fn device_type(&self) -> u32;

    /// The most descriptors each of its queues can hold.
    fn queue_sizes(&self) -> &[u16];

    /// Its device-specific feature bits; the transport adds VERSION_1 and
    /// EVENT_IDX.
    fn features(&self) -> u64;

    /// Reads its config space (at `offset` from the start of it).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes to its config space; ignored by devices whose config is read-only.
    fn write_config(&self, _offset: u64, _data: &[u8]) {}

    /// The queue work for the `features` the driver accepted, to run on the
    /// device's thread from DRIVER_OK until reset.
    fn activate(&self, features: u64) -> Result<Box<dyn QueueHandler>>;
}

/// A device's queue work, on its own thread.
pub trait QueueHandler: Send {
    /// Before the first notification: watch the device's own fds.
    fn start(&mut self, _ctx: &mut Context<'_>) -> Result<()> {
        Ok(())
    }

    /// The driver made buffers available on queue `index`.
    fn queue_notified(&mut self, index: usize, ctx: &mut Context<'_>) -> Result<()>;

    /// An fd the handler watches (`Context::watch`) is ready.
    fn fd_ready(&mut self, _token: u64, _events: EventSet, _ctx: &mut Context<'_>) -> Result<()> {
        Ok(())
    }
}

/// Guest RAM as the devices read and write it.
pub type Memory = GuestMemoryMmap;

/// The queue error as a device error naming the device.
fn queue_error(kind: &str) -> impl Fn(virtio_queue::Error) -> crate::error::Error + '_ {
    move |e| crate::error::Error::Device(format!("{kind}: virtqueue: {e}"))
}
