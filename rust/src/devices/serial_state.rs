//! The 16550A's state as a snapshot keeps it: vm-superio's `SerialState`
//! (its registers and the received bytes the guest has not read yet) with
//! the serde support that crate leaves to a companion of another version.

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSnapshot {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    /// Received, not yet read by the guest (at most the 64-byte FIFO).
    in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialSnapshot {
    fn from(s: SerialState) -> Self {
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<SerialSnapshot> for SerialState {
    fn from(s: SerialSnapshot) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let state = SerialState {
            scratch: 0x5a,
            line_control: 0x03,
            in_buffer: b"ab".to_vec(),
            ..SerialState::default()
        };
        let json = serde_json::to_value(SerialSnapshot::from(state.clone())).unwrap();
        assert_eq!(json["scratch"], 0x5a);
        let back: SerialSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(SerialState::from(back), state);
    }
}
