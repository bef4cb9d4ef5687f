//! Kicking a vCPU thread out of KVM_RUN with a real-time signal.

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::error::{Error, Result};

/// Real-time signal that kicks a vCPU thread out of KVM_RUN (offset from SIGRTMIN).
const KICK_SIGNAL_OFFSET: i32 = 7;

pub fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler for the kick signal; its only job is to make
/// KVM_RUN return EINTR. Without SA_RESTART, so the ioctl is not resumed.
pub fn install_kick_handler() -> Result<()> {
    register_signal_handler(kick_signal(), ignore_kick).map_err(|e| Error::Kvm {
        op: "installing the vCPU kick signal handler",
        source: e,
    })
}
