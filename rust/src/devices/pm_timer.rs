//! The ACPI power-management timer (ACPI 6.5, 4.8.3.3 "Power Management
//! Timer"): a free-running 24-bit counter at 3.579545 MHz that the guest finds
//! through the FADT's PM_TMR_BLK and reads as one 32-bit register.

use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;

use super::builtin::{initializer, BuiltinDevice};
use super::{Device, IoAction};
use crate::error::Result;

const FREQUENCY_HZ: u128 = 3_579_545;
const COUNTER_MASK: u32 = 0x00FF_FFFF;
const REGISTER_SIZE: u64 = 4;

/// Counts from the moment the device is created, on the host's monotonic clock.
pub struct PmTimer {
    started: Instant,
}

impl PmTimer {
    fn count(&self) -> u32 {
        let ticks = self.started.elapsed().as_nanos() * FREQUENCY_HZ / 1_000_000_000;
        // Truncation is the counter wrapping, as the hardware's does.
        ticks as u32 & COUNTER_MASK
    }
}

impl Device for PmTimer {
    fn kind(&self) -> String {
        "PmTimer".into()
    }

    fn read(&self, offset: u64, data: &mut [u8]) -> Result<IoAction> {
        let register = self.count().to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = if at < REGISTER_SIZE {
                register[at as usize]
            } else {
                0
            };
        }
        Ok(IoAction::Continue)
    }

    /// The timer is read-only; writes are ignored as on hardware.
    fn write(&self, _offset: u64, _data: &[u8]) -> Result<IoAction> {
        Ok(IoAction::Continue)
    }
}

/// `pyfastvm.devices.PmTimer()`: the ACPI PM timer, 4 ports.
#[pyclass(extends = BuiltinDevice, frozen, module = "pyfastvm.devices", name = "PmTimer")]
pub struct PyPmTimer;

#[pymethods]
impl PyPmTimer {
    #[new]
    fn py_new() -> PyClassInitializer<Self> {
        let timer = PmTimer {
            started: Instant::now(),
        };
        initializer(Arc::new(timer)).add_subclass(PyPmTimer)
    }

    /// Ticks per second.
    #[classattr]
    const FREQUENCY: u64 = FREQUENCY_HZ as u64;
    #[classattr]
    const PORTS: u64 = REGISTER_SIZE;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_at_the_acpi_rate() {
        let timer = PmTimer {
            started: Instant::now() - std::time::Duration::from_millis(100),
        };
        let mut data = [0u8; 4];
        timer.read(0, &mut data).unwrap();
        let ticks = u32::from_le_bytes(data);
        // 100 ms is 357,954 ticks; allow for the time the test itself takes.
        assert!((357_954..400_000).contains(&ticks), "{ticks}");
    }
}
