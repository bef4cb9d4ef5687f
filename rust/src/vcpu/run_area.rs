//! The vCPU's kvm_run area, shared so other threads can set `immediate_exit`.

use std::ptr::addr_of_mut;
use std::sync::atomic::AtomicU8;

use kvm_bindings::{
    kvm_run, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
};

use super::run_loop::ExitDetails;
use crate::exit::Exit;

pub struct RunArea(pub *mut kvm_run);

// SAFETY: the pointer targets the kvm_run mmap owned by the VcpuFd stored next
// to it in `VcpuShared`, so it is valid for as long as the RunArea; other
// threads only touch the `immediate_exit` byte, atomically.
unsafe impl Send for RunArea {}
// SAFETY: as above.
unsafe impl Sync for RunArea {}

impl RunArea {
    pub fn immediate_exit(&self) -> &AtomicU8 {
        // SAFETY: `immediate_exit` is a u8 inside the live kvm_run mapping; all
        // our accesses to it go through this atomic, and KVM only reads it.
        unsafe { AtomicU8::from_ptr(addr_of_mut!((*self.0).immediate_exit)) }
    }
}

impl ExitDetails for RunArea {
    fn io_size(&self) -> usize {
        // SAFETY: read right after KVM_RUN returned KVM_EXIT_IO, when the
        // kernel has filled the `io` member of the union.
        usize::from(unsafe { (*self.0).__bindgen_anon_1.io.size }).max(1)
    }

    fn exit_reason(&self) -> u32 {
        // SAFETY: a plain u32 the kernel sets on every exit.
        unsafe { (*self.0).exit_reason }
    }

    fn internal_error(&self) -> Exit {
        // SAFETY: read right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR,
        // when the kernel has filled the `internal` member of the union.
        let internal = unsafe { (*self.0).__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let data = internal.data[..ndata].to_vec();
        // SAFETY: `emulation_failure` overlays `internal` with the same prefix.
        let failure = unsafe { (*self.0).__bindgen_anon_1.emulation_failure };
        let has_bytes = u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
        let instruction = (internal.suberror == KVM_INTERNAL_ERROR_EMULATION
            && failure.flags & has_bytes != 0)
            .then(|| {
                // SAFETY: the flag says the instruction bytes are present.
                let insn = unsafe { failure.__bindgen_anon_1.__bindgen_anon_1 };
                insn.insn_bytes[..usize::from(insn.insn_size).min(15)].to_vec()
            });
        Exit::internal_error(internal.suberror, data, instruction)
    }
}
