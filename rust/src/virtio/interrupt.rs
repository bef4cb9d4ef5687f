//! The transport's interrupt: the InterruptStatus bits the driver reads and
//! acknowledges, and the eventfd that KVM turns into the device's GSI.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{Error, Result};

pub struct Interrupt {
    status: AtomicU32,
    fd: EventFd,
}

impl Interrupt {
    pub fn new() -> Result<Self> {
        let fd = EventFd::new(EFD_NONBLOCK)
            .map_err(|e| Error::Device(format!("cannot create a virtio interrupt eventfd: {e}")))?;
        Ok(Interrupt {
            status: AtomicU32::new(0),
            fd,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The device put buffers in a used ring.
    pub fn used_buffer(&self) -> Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    /// The config space changed (or the device needs a reset).
    pub fn config_change(&self) -> Result<()> {
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    fn raise(&self, bit: u32) -> Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.fd
            .write(1)
            .map_err(|e| Error::Device(format!("cannot signal a virtio interrupt: {e}")))
    }

    /// InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: the driver has seen these bits.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Restores InterruptStatus from a snapshot, or clears it on reset.
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }
}
