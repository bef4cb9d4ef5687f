//! The 16550A's state as a snapshot keeps it: vm-superio's `SerialState`
//! (its registers and the received bytes the guest has not read yet), with
//! the serde support that crate leaves to a companion of another version.

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

/// serde's view of vm-superio's struct, field for field.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState", deny_unknown_fields)]
struct SerialStateDef {
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

#[derive(Serialize, Deserialize)]
pub struct SerialSnapshot(#[serde(with = "SerialStateDef")] pub SerialState);

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
        let json = serde_json::to_value(SerialSnapshot(state.clone())).unwrap();
        assert_eq!(json["scratch"], 0x5a);
        let back: SerialSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back.0, state);
    }
}
