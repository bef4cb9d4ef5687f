//! Saving and restoring a vCPU's whole state (crate::state::vcpu) once any
//! exit it stopped at is complete.

use std::sync::atomic::Ordering;

use kvm_ioctls::VcpuFd;

use super::{Request, VcpuShared};
use crate::error::Result;
use crate::state::vcpu::{self as vcpu_state, VcpuState};

impl VcpuShared {
    pub(super) fn save_state(&self) -> Result<VcpuState> {
        self.with_fd(|fd| {
            self.complete_pending_exit(fd)?;
            vcpu_state::save(fd)
        })
    }

    /// Also completes a pending exit first: KVM would otherwise finish it
    /// on the next KVM_RUN, on top of the restored registers.
    pub(super) fn restore_state(&self, state: &VcpuState) -> Result<()> {
        self.with_fd(|fd| {
            self.complete_pending_exit(fd)?;
            vcpu_state::restore(fd, state)
        })
    }

    /// A PIO or MMIO exit completes (RIP past the instruction, an IN's
    /// value in RAX) only on the next KVM_RUN. Enters once with
    /// `immediate_exit` set, as a stop does: KVM finishes the exit and
    /// returns before running the guest. A string instruction may need more
    /// device accesses first; the run loop hands those to the devices.
    fn complete_pending_exit(&self, fd: &mut VcpuFd) -> Result<()> {
        let earlier = self.take_request();
        self.request.store(Request::Stop as u8, Ordering::SeqCst);
        self.run_area.immediate_exit().store(1, Ordering::SeqCst);
        // The loop takes the stop when KVM_RUN returns without entering.
        while self.request.load(Ordering::SeqCst) != 0 {
            self.run_loop(fd)?;
        }
        if let Some(request) = earlier {
            self.request(request);
        }
        Ok(())
    }
}
