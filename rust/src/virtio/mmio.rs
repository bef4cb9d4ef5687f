//! The virtio-mmio transport (virtio 1.2, 4.2, the modern layout, Version 2):
//! the registers through which the driver reads the device's identity and
//! features, negotiates, sets up the queues and drives the device status.
//! QueueNotify writes normally never get here: KVM signals the queue's
//! eventfd itself (the ioevents below); a write that does arrive (from a
//! host-side `write()`) signals the same eventfd.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::event_loop::{Shared, Worker};
use super::interrupt::Interrupt;
use super::{Memory, VirtioDevice};
use crate::devices::{state, Device, IoAction, IoEvent};
use crate::error::{Error, Result};
use crate::worker::WorkerControl;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x5646_5950; // "PYFV"
const CONFIG_START: u64 = VIRTIO_MMIO_CONFIG as u64;
/// Features every device gets from the transport.
const TRANSPORT_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX;

/// The registers that are not a queue's.
#[derive(Clone, Copy, Default, Serialize, Deserialize)]
struct Registers {
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
}

pub struct MmioTransport {
    device: Arc<dyn VirtioDevice>,
    registers: Mutex<Registers>,
    queues: Arc<Mutex<Vec<Queue>>>,
    notifiers: Arc<Vec<EventFd>>,
    interrupt: Arc<Interrupt>,
    control: Arc<WorkerControl>,
    memory: OnceLock<Arc<Memory>>,
    worker: Mutex<Option<Worker>>,
}

impl MmioTransport {
    pub fn new(device: Arc<dyn VirtioDevice>) -> Result<Self> {
        let kind = device.kind();
        let io_error = |e: std::io::Error| Error::Device(format!("{kind}: {e}"));
        let queues = device
            .queue_sizes()
            .iter()
            .map(|&size| Queue::new(size).map_err(super::queue_error(kind)))
            .collect::<Result<Vec<_>>>()?;
        let notifiers = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(io_error))
            .collect::<Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            registers: Mutex::new(Registers::default()),
            queues: Arc::new(Mutex::new(queues)),
            notifiers: Arc::new(notifiers),
            interrupt: Arc::new(Interrupt::new()?),
            control: Arc::new(WorkerControl::new().map_err(io_error)?),
            memory: OnceLock::new(),
            worker: Mutex::new(None),
        })
    }

    /// The device raises a config-change interrupt (its config space changed).
    pub fn config_changed(&self) -> Result<()> {
        self.registers().config_generation += 1;
        self.interrupt.config_change()
    }

    fn registers(&self) -> MutexGuard<'_, Registers> {
        self.registers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn queues(&self) -> MutexGuard<'_, Vec<Queue>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | TRANSPORT_FEATURES
    }

    fn read_register(&self, offset: u32) -> u32 {
        let registers = *self.registers();
        let queue = |read: fn(&Queue) -> u32| {
            self.queues()
                .get(registers.queue_sel as usize)
                .map_or(0, read)
        };
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                feature_word(self.offered_features(), registers.device_features_sel)
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue(|q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue(|q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => registers.status,
            VIRTIO_MMIO_CONFIG_GENERATION => registers.config_generation,
            // No shared memory regions: their length reads as "none" (-1).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            _ => 0,
        }
    }

    fn write_register(&self, offset: u32, value: u32) -> Result<()> {
        let mut registers = self.registers();
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => registers.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => set_feature_word(&mut registers, value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => registers.driver_features_sel = value,
            VIRTIO_MMIO_QUEUE_SEL => registers.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            VIRTIO_MMIO_STATUS => return self.set_status(&mut registers, value),
            _ => self.write_queue_register(registers.queue_sel, offset, value),
        }
        Ok(())
    }

    /// QueueNum, QueueReady and the ring addresses of the selected queue.
    fn write_queue_register(&self, queue_sel: u32, offset: u32, value: u32) {
        let mut queues = self.queues();
        let Some(queue) = queues.get_mut(queue_sel as usize) else {
            return;
        };
        match offset {
            VIRTIO_MMIO_QUEUE_NUM => queue.set_size(value as u16),
            VIRTIO_MMIO_QUEUE_READY => queue.set_ready(value == 1),
            VIRTIO_MMIO_QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => queue.set_avail_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => queue.set_avail_ring_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_USED_LOW => queue.set_used_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_USED_HIGH => queue.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn notify(&self, queue: u32) {
        if let Some(notifier) = self.notifiers.get(queue as usize) {
            // A full counter only means a notification is pending already.
            let _ = notifier.write(1);
        }
    }

    /// The driver's status write (virtio 1.2, 3.1.1): 0 resets; FEATURES_OK
    /// sticks only for features the device offered, with VERSION_1;
    /// DRIVER_OK starts the device thread.
    fn set_status(&self, registers: &mut Registers, value: u32) -> Result<()> {
        if value == 0 {
            self.reset(registers);
            return Ok(());
        }
        let mut status = value;
        let newly = value & !registers.status;
        if newly & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable(registers) {
            status &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        registers.status = status;
        if newly & VIRTIO_CONFIG_S_DRIVER_OK != 0 && status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            if let Err(e) = self.activate(registers.driver_features) {
                eprintln!(
                    "pyfastvm: cannot start the {} device: {e}",
                    self.device.kind()
                );
                registers.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                self.interrupt.config_change()?;
            }
        }
        Ok(())
    }

    fn features_acceptable(&self, registers: &Registers) -> bool {
        let accepted = registers.driver_features;
        accepted & !self.offered_features() == 0 && accepted & 1 << VIRTIO_F_VERSION_1 != 0
    }

    /// Starts the device thread on the queues the driver made ready.
    fn activate(&self, features: u64) -> Result<()> {
        let kind = self.device.kind();
        let memory = self.memory.get().ok_or_else(|| {
            Error::Device(format!(
                "{kind} is not in a VM: add it with vm.add_mmio_device"
            ))
        })?;
        for (index, queue) in self.queues().iter_mut().enumerate() {
            if queue.ready() && !queue.is_valid(memory.as_ref()) {
                return Err(Error::Device(format!(
                    "{kind}: queue {index} does not fit in guest memory"
                )));
            }
            queue.set_event_idx(features & 1 << VIRTIO_RING_F_EVENT_IDX != 0);
        }
        self.end_worker();
        let handler = self.device.activate(features)?;
        let shared = Shared {
            kind,
            memory: memory.clone(),
            queues: self.queues.clone(),
            notifiers: self.notifiers.clone(),
            interrupt: self.interrupt.clone(),
            control: self.control.clone(),
        };
        *self.worker() = Some(Worker::spawn(shared, handler)?);
        Ok(())
    }

    /// Back to the state after power-on: the thread ended, the queues and
    /// registers cleared (virtio 1.2, 2.4).
    fn reset(&self, registers: &mut Registers) {
        self.end_worker();
        self.queues().iter_mut().for_each(Queue::reset);
        self.interrupt.set_status(0);
        *registers = Registers {
            config_generation: registers.config_generation,
            ..Registers::default()
        };
    }

    fn end_worker(&self) {
        if let Some(worker) = self.worker().take() {
            worker.end();
        }
    }

    fn worker(&self) -> MutexGuard<'_, Option<Worker>> {
        self.worker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for MmioTransport {
    /// Ends the device thread, even one parked by a pause.
    fn drop(&mut self) {
        self.control.stop();
        self.end_worker();
    }
}

/// Bits 0-31 or 32-63 of a feature set, as the selector asks.
fn feature_word(features: u64, select: u32) -> u32 {
    match select {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

fn set_feature_word(registers: &mut Registers, value: u32) {
    let features = &mut registers.driver_features;
    match registers.driver_features_sel {
        0 => *features = (*features & !0xffff_ffff) | u64::from(value),
        1 => *features = (*features & 0xffff_ffff) | u64::from(value) << 32,
        _ => {}
    }
}

/// What a snapshot keeps of a transport: the registers, the interrupt
/// status and every queue's configuration and ring positions.
#[derive(Serialize, Deserialize)]
struct TransportState {
    registers: Registers,
    interrupt_status: u32,
    queues: Vec<SavedQueue>,
}

/// virtio-queue's QueueState, in a form serde can write.
#[derive(Serialize, Deserialize)]
struct SavedQueue {
    max_size: u16,
    size: u16,
    ready: bool,
    event_idx: bool,
    next_avail: u16,
    next_used: u16,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl From<QueueState> for SavedQueue {
    fn from(q: QueueState) -> Self {
        SavedQueue {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            event_idx: q.event_idx_enabled,
            next_avail: q.next_avail,
            next_used: q.next_used,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl SavedQueue {
    fn queue(&self, kind: &str) -> Result<Queue> {
        let state = QueueState {
            max_size: self.max_size,
            size: self.size,
            ready: self.ready,
            event_idx_enabled: self.event_idx,
            next_avail: self.next_avail,
            next_used: self.next_used,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        Queue::try_from(state).map_err(|e| Error::Argument(format!("{kind} state: queue: {e}")))
    }
}

impl Device for MmioTransport {
    fn kind(&self) -> String {
        self.device.kind().into()
    }

    fn interrupt_fd(&self) -> Option<RawFd> {
        Some(self.interrupt.fd())
    }

    fn worker(&self) -> Option<&WorkerControl> {
        Some(&self.control)
    }

    fn ioevents(&self) -> Vec<IoEvent> {
        (0..)
            .zip(self.notifiers.iter())
            .map(|(index, notifier)| IoEvent {
                offset: u64::from(VIRTIO_MMIO_QUEUE_NOTIFY),
                value: index,
                fd: notifier.as_raw_fd(),
            })
            .collect()
    }

    fn attach_memory(&self, memory: &Arc<Memory>) -> Result<()> {
        self.memory.set(memory.clone()).map_err(|_| {
            Error::Argument(format!(
                "this {} is in a VM already: create one device per VM",
                self.device.kind()
            ))
        })
    }

    fn read(&self, offset: u64, data: &mut [u8]) -> Result<IoAction> {
        if offset >= CONFIG_START {
            self.device.read_config(offset - CONFIG_START, data);
        } else if let Ok(word) = <&mut [u8; 4]>::try_from(&mut *data) {
            *word = self.read_register(offset as u32).to_le_bytes();
        } else {
            // The registers take 32-bit accesses only (4.2.2).
            data.fill(0);
        }
        Ok(IoAction::Continue)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<IoAction> {
        if offset >= CONFIG_START {
            self.device.write_config(offset - CONFIG_START, data);
        } else if let Ok(word) = <[u8; 4]>::try_from(data) {
            self.write_register(offset as u32, u32::from_le_bytes(word))?;
        }
        Ok(IoAction::Continue)
    }

    /// The registers and queues; the device's own state (a vsock
    /// connection, say) is not kept: a restored device starts afresh there.
    fn save_state(&self) -> Result<Value> {
        let saved = TransportState {
            registers: *self.registers(),
            interrupt_status: self.interrupt.status(),
            queues: self.queues().iter().map(|q| q.state().into()).collect(),
        };
        state::to_state(self.device.kind(), &saved)
    }

    /// Puts the registers and queues back and, for a driver that was
    /// running, starts the device thread again.
    fn restore_state(&self, saved: &Value) -> Result<()> {
        let kind = self.device.kind();
        let saved: TransportState = state::from_state(kind, saved)?;
        if saved.queues.len() != self.notifiers.len() {
            return Err(Error::Argument(format!(
                "a {kind} has {} queues, and the state has {}",
                self.notifiers.len(),
                saved.queues.len()
            )));
        }
        let mut registers = self.registers();
        self.reset(&mut registers);
        *self.queues() = saved
            .queues
            .iter()
            .map(|q| q.queue(kind))
            .collect::<Result<_>>()?;
        *registers = saved.registers;
        self.interrupt.set_status(saved.interrupt_status);
        if registers.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.activate(registers.driver_features)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_words_select_the_low_and_high_halves() {
        let features = 0x1234_5678_9abc_def0;
        assert_eq!(feature_word(features, 0), 0x9abc_def0);
        assert_eq!(feature_word(features, 1), 0x1234_5678);
        assert_eq!(feature_word(features, 2), 0);
        let mut registers = Registers {
            driver_features_sel: 1,
            ..Registers::default()
        };
        set_feature_word(&mut registers, 1);
        registers.driver_features_sel = 0;
        set_feature_word(&mut registers, 0x20);
        assert_eq!(registers.driver_features, 1 << 32 | 0x20);
    }
}
