//! LDMXCSR m32 at CPL 0 on KVM-on-PVM hosts, which the emulator lacks: the
//! VMM reads the operand and loads MXCSR through KVM_SET_XSAVE (Intel SDM vol.
//! 2A, "LDMXCSR": 0F AE /2).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{AssistCpu, ExitAssist};
use crate::error::Result;
use crate::x86::decode::{memory_operand, prefixes};

const OPCODE: [u8; 2] = [0x0F, 0xAE];
const LDMXCSR_EXTENSION: u8 = 2;
const FS_OVERRIDE: u8 = 0x64;

#[derive(Default)]
pub struct LdmxcsrAssist {
    completed: AtomicU64,
}

impl ExitAssist for LdmxcsrAssist {
    fn name(&self) -> &'static str {
        "ldmxcsr"
    }

    fn emulation_failure(&self, cpu: &mut AssistCpu<'_>, instruction: &[u8]) -> Result<bool> {
        let at = prefixes(instruction).opcode_at;
        if instruction.get(at..at + 2) != Some(&OPCODE) {
            return Ok(false);
        }
        let sregs = cpu.sregs();
        let (fs, gs) = (sregs.fs.base, sregs.gs.base);
        let segment_base = |prefix| if prefix == FS_OVERRIDE { fs } else { gs };
        let Some(operand) = memory_operand(instruction, 2, cpu.regs(), segment_base)
            .filter(|operand| operand.reg == LDMXCSR_EXTENSION)
        else {
            return Ok(false);
        };
        let mut value = [0u8; 4];
        cpu.read_virtual(operand.address, &mut value)?;
        cpu.ioctls.set_mxcsr(u32::from_le_bytes(value))?;
        cpu.skip_instruction(operand.length);
        self.completed.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![("ldmxcsr", self.completed.load(Ordering::Relaxed))]
    }
}
