//! The memory operand of a 64-bit-mode instruction (Intel SDM vol. 2A, 2.1
//! "Instruction Format", 2.2.1 "REX Prefixes"): legacy prefixes, REX, the
//! opcode, ModRM, SIB and displacement, as far as the exit assists need to
//! find what an instruction the emulator lacks would have read.

use kvm_bindings::kvm_regs;

const LEGACY_PREFIXES: [u8; 11] = [
    0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3,
];
const FS_OVERRIDE: u8 = 0x64;
const GS_OVERRIDE: u8 = 0x65;
const REX_B: u8 = 1;
const REX_X: u8 = 2;

/// Prefixes and REX in front of the opcode.
pub struct Prefixes {
    /// Index of the first opcode byte.
    pub opcode_at: usize,
    rex: u8,
    segment: Option<u8>,
}

pub fn prefixes(insn: &[u8]) -> Prefixes {
    let mut at = 0;
    let mut segment = None;
    while let Some(&byte) = insn.get(at).filter(|b| LEGACY_PREFIXES.contains(b)) {
        if byte == FS_OVERRIDE || byte == GS_OVERRIDE {
            segment = Some(byte);
        }
        at += 1;
    }
    let rex = insn
        .get(at)
        .copied()
        .filter(|b| b & 0xF0 == 0x40)
        .unwrap_or(0);
    Prefixes {
        opcode_at: at + usize::from(rex != 0),
        rex,
        segment,
    }
}

/// A decoded ModRM memory operand.
#[derive(Debug, PartialEq, Eq)]
pub struct MemoryOperand {
    /// The linear address, with the FS or GS base when overridden.
    pub address: u64,
    /// ModRM.reg: a register, or an opcode extension for group opcodes.
    pub reg: u8,
    /// Of the whole instruction (no immediate follows the operand).
    pub length: usize,
}

/// The general registers in ModRM/SIB encoding order.
fn gpr(regs: &kvm_regs, number: u8) -> u64 {
    [
        regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
        regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ][usize::from(number & 15)]
}

fn displacement(insn: &[u8], at: usize, size: usize) -> Option<u64> {
    let bytes = insn.get(at..at + size)?;
    Some(match size {
        1 => bytes[0] as i8 as i64 as u64,
        _ => i32::from_le_bytes(bytes.try_into().ok()?) as i64 as u64,
    })
}

/// The memory operand of `insn`, whose opcode is `opcode_length` bytes long;
/// None for a register operand or truncated bytes.
pub fn memory_operand(
    insn: &[u8],
    opcode_length: usize,
    regs: &kvm_regs,
    segment_base: impl Fn(u8) -> u64,
) -> Option<MemoryOperand> {
    let prefixes = prefixes(insn);
    let mut at = prefixes.opcode_at + opcode_length;
    let modrm = *insn.get(at)?;
    at += 1;
    let (mode, reg, rm) = (modrm >> 6, modrm >> 3 & 7, modrm & 7);
    if mode == 3 {
        return None;
    }
    let rex = prefixes.rex;
    let mut address = if rm == 4 {
        let sib = *insn.get(at)?;
        at += 1;
        let (scale, index, base) = (sib >> 6, (sib >> 3 & 7) | (rex & REX_X) << 2, sib & 7);
        let scaled = if index == 4 {
            0
        } else {
            gpr(regs, index) << scale
        };
        let based = if base == 5 && mode == 0 {
            at += 4;
            displacement(insn, at - 4, 4)?
        } else {
            gpr(regs, base | (rex & REX_B) << 3)
        };
        scaled.wrapping_add(based)
    } else if rm == 5 && mode == 0 {
        // RIP-relative: from the end of the instruction.
        at += 4;
        regs.rip
            .wrapping_add(at as u64)
            .wrapping_add(displacement(insn, at - 4, 4)?)
    } else {
        gpr(regs, rm | (rex & REX_B) << 3)
    };
    if mode != 0 {
        let size = if mode == 1 { 1 } else { 4 };
        address = address.wrapping_add(displacement(insn, at, size)?);
        at += size;
    }
    if let Some(segment) = prefixes.segment {
        address = address.wrapping_add(segment_base(segment));
    }
    Some(MemoryOperand {
        address,
        reg,
        length: at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(hex: &str) -> (u64, usize, u8) {
        let insn: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let regs = kvm_regs {
            rax: 0x1000,
            rcx: 0x8000,
            rsp: 0x8000,
            r9: 0x2000,
            rip: 0x5000,
            ..Default::default()
        };
        let gs_only = |segment| if segment == GS_OVERRIDE { 0x7000 } else { 0 };
        let operand = memory_operand(&insn, 2, &regs, gs_only).unwrap();
        (operand.address, operand.length, operand.reg)
    }

    #[test]
    fn ldmxcsr_operands_decode_like_the_cpu() {
        assert_eq!(decode("0fae542404"), (0x8004, 5, 2)); // ldmxcsr [rsp+4]
        assert_eq!(decode("0fae10"), (0x1000, 3, 2)); // ldmxcsr [rax]
        assert_eq!(decode("410fae5108"), (0x2008, 5, 2)); // ldmxcsr [r9+8]
        assert_eq!(decode("0fae1425f0ff0000"), (0xfff0, 8, 2)); // ldmxcsr [0xfff0]
        assert_eq!(decode("0fae1510000000"), (0x5000 + 7 + 0x10, 7, 2)); // [rip+0x10]
        assert_eq!(decode("650fae142510000000"), (0x7010, 9, 2)); // gs:[0x10]
        assert_eq!(decode("0fae5448f8"), (0x1000 + 0x10000 - 8, 5, 2)); // [rax+rcx*2-8]
    }

    #[test]
    fn register_operands_and_truncated_bytes_decode_to_nothing() {
        let regs = kvm_regs::default();
        assert!(memory_operand(&[0x0f, 0xae, 0xd0], 2, &regs, |_| 0).is_none());
        assert!(memory_operand(&[0x0f, 0xae, 0x14], 2, &regs, |_| 0).is_none());
    }
}
