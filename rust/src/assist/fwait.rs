//! FWAIT at CPL 0 on KVM-on-PVM hosts, which the emulator lacks. With no x87
//! exception pending it does nothing (Intel SDM vol. 2A, "WAIT/FWAIT"), and
//! a guest that runs it has none: it would have taken #MF on the x87
//! instruction that raised one.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{AssistCpu, ExitAssist};
use crate::error::Result;

const FWAIT: u8 = 0x9B;

#[derive(Default)]
pub struct FwaitAssist {
    completed: AtomicU64,
}

impl ExitAssist for FwaitAssist {
    fn name(&self) -> &'static str {
        "fwait"
    }

    fn emulation_failure(&self, cpu: &mut AssistCpu<'_>, instruction: &[u8]) -> Result<bool> {
        if instruction.first() != Some(&FWAIT) {
            return Ok(false);
        }
        cpu.skip_instruction(1);
        self.completed.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![("fwait", self.completed.load(Ordering::Relaxed))]
    }
}
