//! The ACPI power-management timer (ACPI 6.5, 4.8.3.3 "Power Management
//! Timer"): a free-running 24-bit counter at 3.579545 MHz that the guest finds
//! through the FADT's PM_TMR_BLK and reads as one 32-bit register.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use pyo3::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::builtin::{initializer, BuiltinDevice};
use super::{state, Device, IoAction};
use crate::error::Result;

const FREQUENCY_HZ: u128 = 3_579_545;
const COUNTER_MASK: u32 = 0x00FF_FFFF;
const REGISTER_SIZE: u64 = 4;

/// Nanoseconds on the host's monotonic clock, from the first use in this process.
fn monotonic_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Counts from when it was created or restored, on the host's monotonic
/// clock: its running time is that clock plus an offset (wrapping), so a
/// restored timer goes on from its saved running time.
pub struct PmTimer {
    offset_ns: AtomicU64,
}

/// What a snapshot keeps: how long the timer had been running.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PmTimerState {
    running_ns: u64,
}

impl PmTimer {
    fn running_for(running_ns: u64) -> Self {
        PmTimer {
            offset_ns: AtomicU64::new(running_ns.wrapping_sub(monotonic_ns())),
        }
    }

    fn running_ns(&self) -> u64 {
        monotonic_ns().wrapping_add(self.offset_ns.load(Ordering::Relaxed))
    }

    fn count(&self) -> u32 {
        let ticks = u128::from(self.running_ns()) * FREQUENCY_HZ / 1_000_000_000;
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

    fn save_state(&self) -> Result<Value> {
        let running_ns = self.running_ns();
        state::to_state("PmTimer", &PmTimerState { running_ns })
    }

    fn restore_state(&self, saved: &Value) -> Result<()> {
        let saved: PmTimerState = state::from_state("PmTimer", saved)?;
        let offset = saved.running_ns.wrapping_sub(monotonic_ns());
        self.offset_ns.store(offset, Ordering::Relaxed);
        Ok(())
    }
}

/// `pyfastvm.devices.PmTimer()`: the ACPI PM timer, 4 ports.
#[pyclass(extends = BuiltinDevice, frozen, module = "pyfastvm.devices", name = "PmTimer")]
pub struct PyPmTimer;

#[pymethods]
impl PyPmTimer {
    #[new]
    fn py_new() -> PyClassInitializer<Self> {
        initializer(Arc::new(PmTimer::running_for(0))).add_subclass(PyPmTimer)
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
        let ticks = PmTimer::running_for(100_000_000).count();
        // 100 ms is 357,954 ticks; allow for the time the test itself takes.
        assert!((357_954..400_000).contains(&ticks), "{ticks}");
    }

    #[test]
    fn a_restored_timer_goes_on_from_its_saved_running_time() {
        let saved = PmTimer::running_for(5_000_000_000).save_state().unwrap();
        let timer = PmTimer::running_for(0);
        timer.restore_state(&saved).unwrap();
        let running = timer.running_ns();
        assert!(
            (5_000_000_000..6_000_000_000).contains(&running),
            "{running}"
        );
        assert!(timer
            .restore_state(&serde_json::json!({"ticks": 1}))
            .is_err());
    }
}
