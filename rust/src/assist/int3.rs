//! INT3 at CPL 0 on KVM-on-PVM hosts, where KVM's instruction emulator lacks
//! protected-mode INT n: Linux uses INT3 for text patching and its int3
//! self-test. The #BP trap is injected with RIP past the INT3, so the
//! guest's handler sees the frame a CPU pushes (Intel SDM vol. 3A, 6.5
//! "Exception Classifications": traps report the next instruction).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{AssistCpu, ExitAssist};
use crate::error::Result;

const INT3: u8 = 0xCC;
const BREAKPOINT_VECTOR: u8 = 3;

#[derive(Default)]
pub struct Int3Assist {
    completed: AtomicU64,
}

impl ExitAssist for Int3Assist {
    fn name(&self) -> &'static str {
        "int3"
    }

    fn emulation_failure(&self, cpu: &mut AssistCpu<'_>, instruction: &[u8]) -> Result<bool> {
        if instruction.first() != Some(&INT3) {
            return Ok(false);
        }
        cpu.skip_instruction(1);
        let events = cpu.events_mut();
        // flags 0: leave NMI, interrupt shadow and SMM state as KVM has them.
        events.flags = 0;
        events.exception.injected = 1;
        events.exception.nr = BREAKPOINT_VECTOR;
        events.exception.has_error_code = 0;
        events.exception.pending = 0;
        self.completed.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![("int3", self.completed.load(Ordering::Relaxed))]
    }
}
