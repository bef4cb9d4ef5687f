//! The 16550A UART of a PC's COM1, from vm-superio; its output is buffered
//! in Rust for Python to drain, and its interrupt is an eventfd for KVM_IRQFD.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use vm_superio::serial::{Error as SerialError, NoEvents};
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use serde_json::Value;

use super::builtin::{initializer, BuiltinDevice};
use super::serial_state::SerialSnapshot;
use super::{state, Device, IoAction};
use crate::error::{Error, Result};

/// Output kept when nobody drains it; older bytes are dropped beyond this.
const OUTPUT_LIMIT: usize = 4 << 20;

/// The UART's interrupt line: an eventfd that KVM turns into an IRQ edge.
/// Shared, so a UART rebuilt from saved state signals the same eventfd.
pub struct IrqTrigger(pub Arc<EventFd>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Transmitted bytes waiting for Python, with an eventfd that is readable
/// while there are any.
pub struct Output {
    bytes: Mutex<VecDeque<u8>>,
    ready: EventFd,
}

impl Output {
    fn new() -> io::Result<Self> {
        Ok(Output {
            bytes: Mutex::new(VecDeque::new()),
            ready: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    fn drain(&self) -> Vec<u8> {
        let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        // Reset the readiness count under the lock, so a concurrent writer re-arms it.
        let _ = self.ready.read();
        bytes.drain(..).collect()
    }
}

/// The `Write` end handed to the UART.
pub struct OutputWriter(Arc<Output>);

impl io::Write for OutputWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut bytes = self.0.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.extend(data);
        let excess = bytes.len().saturating_sub(OUTPUT_LIMIT);
        bytes.drain(..excess);
        self.0.ready.write(1)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type SerialUart = Uart<IrqTrigger, NoEvents, OutputWriter>;

pub struct SerialDevice {
    uart: Mutex<SerialUart>,
    output: Arc<Output>,
    irq: Arc<EventFd>,
}

impl SerialDevice {
    fn new() -> Result<Self> {
        let io_error = |e: io::Error| Error::Device(format!("cannot create the serial port: {e}"));
        let output = Arc::new(Output::new().map_err(io_error)?);
        let irq = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io_error)?);
        let uart = Uart::new(IrqTrigger(irq.clone()), OutputWriter(output.clone()));
        Ok(SerialDevice {
            uart: Mutex::new(uart),
            output,
            irq,
        })
    }

    fn uart(&self) -> std::sync::MutexGuard<'_, SerialUart> {
        self.uart.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Device for SerialDevice {
    fn kind(&self) -> String {
        "Serial".into()
    }

    fn interrupt_fd(&self) -> Option<RawFd> {
        Some(self.irq.as_raw_fd())
    }

    fn read(&self, offset: u64, data: &mut [u8]) -> Result<IoAction> {
        let value = self.uart().read(offset as u8);
        data.fill(0);
        data[0] = value;
        Ok(IoAction::Continue)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<IoAction> {
        self.uart()
            .write(offset as u8, data[0])
            .map_err(|e| Error::Device(format!("serial port write failed: {e:?}")))?;
        Ok(IoAction::Continue)
    }

    /// The registers and the received bytes the guest has not read; output
    /// not yet drained stays with this device.
    fn save_state(&self) -> Result<Value> {
        state::to_state("Serial", &SerialSnapshot(self.uart().state()))
    }

    /// Rebuilds the UART from `saved`, raising its interrupt if one was due.
    fn restore_state(&self, saved: &Value) -> Result<()> {
        let SerialSnapshot(saved) = state::from_state("Serial", saved)?;
        let uart = Uart::from_state(
            &saved,
            IrqTrigger(self.irq.clone()),
            NoEvents,
            OutputWriter(self.output.clone()),
        )
        .map_err(|e| match e {
            SerialError::FullFifo => Error::Argument(
                "a Serial state holds at most 64 unread bytes, what its FIFO holds".into(),
            ),
            other => Error::Device(format!("cannot restore the serial port: {other:?}")),
        })?;
        *self.uart() = uart;
        Ok(())
    }
}

/// `pyfastvm.devices.Serial()`: a 16550A UART. Put it on ports 0x3f8-0x3ff
/// with `gsi=4` (its `irq_fd` is then connected to IRQ 4), and drain what the
/// guest transmits with `read_output()` (whenever `output_fd` is readable).
#[pyclass(extends = BuiltinDevice, frozen, module = "pyfastvm.devices", name = "Serial")]
pub struct PySerial {
    serial: Arc<SerialDevice>,
}

#[pymethods]
impl PySerial {
    #[new]
    fn py_new() -> Result<PyClassInitializer<Self>> {
        let serial = Arc::new(SerialDevice::new()?);
        Ok(initializer(serial.clone()).add_subclass(PySerial { serial }))
    }

    /// The 16550A's eight registers take eight consecutive ports.
    #[classattr]
    const PORTS: u64 = 8;

    /// Everything the guest transmitted since the last call.
    fn read_output<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.serial.output.drain())
    }

    /// An eventfd that is readable while transmitted output is waiting.
    #[getter]
    fn output_fd(&self) -> RawFd {
        self.serial.output.ready.as_raw_fd()
    }

    /// The eventfd the UART signals its interrupt on (for `vm.register_irqfd`).
    #[getter]
    fn irq_fd(&self) -> RawFd {
        self.serial.irq.as_raw_fd()
    }

    /// Queues `data` as received bytes; returns how many fit in the 64-byte
    /// FIFO (0 while the guest has not drained it).
    fn write_input(&self, data: &[u8]) -> Result<usize> {
        match self.serial.uart().enqueue_raw_bytes(data) {
            Err(vm_superio::serial::Error::FullFifo) => Ok(0),
            taken => taken.map_err(|e| Error::Device(format!("serial input failed: {e:?}"))),
        }
    }
}
