//! IA-32e interrupt and trap gates (Intel SDM vol. 3A, 6.14.1 "64-Bit Mode
//! IDT", Figure 6-8): 16 bytes each, the handler's offset split over three
//! fields.

pub const GATE_SIZE: u64 = 16;
pub const PAGE_FAULT_VECTOR: u64 = 14;
/// Type of a 64-bit interrupt gate (SDM 3A, Table 3-2).
pub const INTERRUPT_GATE: u8 = 0xE;

/// One IDT entry, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    raw: [u8; 16],
}

impl Gate {
    pub fn from_bytes(raw: [u8; 16]) -> Self {
        Gate { raw }
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.raw
    }

    /// The handler's address: offset bits 15:0, 31:16 and 63:32.
    pub fn offset(&self) -> u64 {
        let low = u16::from_le_bytes([self.raw[0], self.raw[1]]);
        let middle = u16::from_le_bytes([self.raw[6], self.raw[7]]);
        let high = u32::from_le_bytes([self.raw[8], self.raw[9], self.raw[10], self.raw[11]]);
        u64::from(low) | u64::from(middle) << 16 | u64::from(high) << 32
    }

    /// The same gate, pointing at `offset`; every other field is kept.
    pub fn with_offset(self, offset: u64) -> Self {
        let mut raw = self.raw;
        raw[0..2].copy_from_slice(&(offset as u16).to_le_bytes());
        raw[6..8].copy_from_slice(&((offset >> 16) as u16).to_le_bytes());
        raw[8..12].copy_from_slice(&((offset >> 32) as u32).to_le_bytes());
        Gate { raw }
    }

    pub fn selector(&self) -> u16 {
        u16::from_le_bytes([self.raw[2], self.raw[3]])
    }

    pub fn gate_type(&self) -> u8 {
        self.raw[5] & 0xF
    }

    pub fn dpl(&self) -> u8 {
        self.raw[5] >> 5 & 3
    }

    pub fn present(&self) -> bool {
        self.raw[5] & 0x80 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interrupt gate to 0xffffffff81200b00 through selector 0x10, as Linux
    /// sets its #PF gate.
    const LINUX_PAGE_FAULT_GATE: [u8; 16] = [
        0x00, 0x0b, 0x10, 0x00, 0x00, 0x8e, 0x20, 0x81, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
    ];

    #[test]
    fn decodes_a_linux_gate() {
        let gate = Gate::from_bytes(LINUX_PAGE_FAULT_GATE);
        assert_eq!(gate.offset(), 0xffff_ffff_8120_0b00);
        assert_eq!(gate.selector(), 0x10);
        assert_eq!(
            (gate.gate_type(), gate.dpl(), gate.present()),
            (INTERRUPT_GATE, 0, true)
        );
    }

    #[test]
    fn redirecting_keeps_every_other_field() {
        let gate = Gate::from_bytes(LINUX_PAGE_FAULT_GATE).with_offset(0xffff_ffff_8120_003f);
        assert_eq!(gate.offset(), 0xffff_ffff_8120_003f);
        let mut expected = LINUX_PAGE_FAULT_GATE;
        expected[0] = 0x3f;
        expected[1] = 0x00;
        assert_eq!(gate.to_bytes(), expected);
    }
}
