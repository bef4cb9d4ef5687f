//! The hardware-reduced ACPI sleep and reset registers (ACPI 6.5, 4.8.3.7
//! "Sleep Control and Status Registers" and 4.8.3.6 "Reset Register"), which
//! the FADT points the guest at: entering S5 powers the machine off, writing
//! the reset value resets it.

use std::sync::Arc;

use pyo3::prelude::*;

use super::builtin::{initializer, BuiltinDevice};
use super::{Device, IoAction, StopReason};
use crate::error::Result;

/// Register offsets within the device's three ports.
const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = 1;
const RESET: u64 = 2;
const PORTS: u64 = 3;

/// SLEEP_CONTROL_REG: SLP_TYPx in bits 2-4, SLP_EN in bit 5.
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0b111;
const SLEEP_ENABLE: u8 = 1 << 5;
/// The SLP_TYPx value the DSDT's \_S5 package gives for soft-off.
const S5_SLEEP_TYPE: u8 = 5;
/// The value the FADT tells the guest to write to RESET_REG.
const RESET_VALUE: u8 = 0x01;

pub struct PowerControl;

impl Device for PowerControl {
    fn kind(&self) -> String {
        "PowerControl".into()
    }

    /// No wake events: the status register reads as zero, and so does the rest.
    fn read(&self, _offset: u64, data: &mut [u8]) -> Result<IoAction> {
        data.fill(0);
        Ok(IoAction::Continue)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<IoAction> {
        let value = data[0];
        Ok(match offset {
            SLEEP_CONTROL if enters_soft_off(value) => IoAction::Stop(StopReason::PowerOff),
            RESET if value == RESET_VALUE => IoAction::Stop(StopReason::Reset),
            _ => IoAction::Continue,
        })
    }
}

fn enters_soft_off(sleep_control: u8) -> bool {
    let sleep_type = sleep_control >> SLEEP_TYPE_SHIFT & SLEEP_TYPE_MASK;
    sleep_control & SLEEP_ENABLE != 0 && sleep_type == S5_SLEEP_TYPE
}

/// `pyfastvm.devices.PowerControl()`: the ACPI sleep control, sleep status
/// and reset registers on three consecutive ports. Entering S5 ends the run
/// with reason "poweroff", the reset value with reason "reset".
#[pyclass(extends = BuiltinDevice, frozen, module = "pyfastvm.devices", name = "PowerControl")]
pub struct PyPowerControl;

#[pymethods]
impl PyPowerControl {
    #[new]
    fn py_new() -> PyClassInitializer<Self> {
        initializer(Arc::new(PowerControl)).add_subclass(PyPowerControl)
    }

    #[classattr]
    const SLEEP_CONTROL: u64 = SLEEP_CONTROL;
    #[classattr]
    const SLEEP_STATUS: u64 = SLEEP_STATUS;
    #[classattr]
    const RESET: u64 = RESET;
    #[classattr]
    const PORTS: u64 = PORTS;
    #[classattr]
    const S5_SLEEP_TYPE: u8 = S5_SLEEP_TYPE;
    #[classattr]
    const RESET_VALUE: u8 = RESET_VALUE;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(offset: u64, value: u8) -> IoAction {
        PowerControl.write(offset, &[value]).unwrap()
    }

    #[test]
    fn entering_s5_powers_off() {
        let s5 = S5_SLEEP_TYPE << SLEEP_TYPE_SHIFT | SLEEP_ENABLE;
        assert_eq!(
            write(SLEEP_CONTROL, s5),
            IoAction::Stop(StopReason::PowerOff)
        );
    }

    #[test]
    fn a_sleep_type_without_enable_or_another_state_does_nothing() {
        assert_eq!(
            write(SLEEP_CONTROL, S5_SLEEP_TYPE << SLEEP_TYPE_SHIFT),
            IoAction::Continue
        );
        assert_eq!(
            write(SLEEP_CONTROL, 3 << SLEEP_TYPE_SHIFT | SLEEP_ENABLE),
            IoAction::Continue
        );
    }

    #[test]
    fn the_reset_value_resets() {
        assert_eq!(write(RESET, RESET_VALUE), IoAction::Stop(StopReason::Reset));
        assert_eq!(write(RESET, 0x06), IoAction::Continue);
        assert_eq!(write(SLEEP_STATUS, RESET_VALUE), IoAction::Continue);
    }
}
