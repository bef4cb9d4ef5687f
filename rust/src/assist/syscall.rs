//! SYSCALL from guest user mode on KVM-on-PVM hosts.
//!
//! There, after a SYSCALL at CPL 3, KVM sets RIP = IA32_LSTAR, RCX and R11,
//! and masks RFLAGS, but leaves CS and SS at the user selectors: the vCPU is
//! still at CPL 3, faults fetching the kernel's entry from a supervisor page,
//! and Linux kills the process. Exceptions from user mode do reach the kernel
//! at CPL 0 through its IDT, so the VMM completes the SYSCALL from that #PF:
//!
//! 1. The guest's write to IA32_LSTAR exits to the VMM (an MSR filter). The
//!    VMM applies it and points the guest's #PF gate at a hook, keeping the
//!    kernel's handler. Linux sets its #PF gate in `setup_arch`, before
//!    `syscall_init` writes IA32_LSTAR, so the gate is there to redirect.
//! 2. Every #PF then enters the hook at CPL 0. The hook is an INT3, which
//!    KVM's emulator cannot run there, so the vCPU exits to the VMM. If the
//!    pushed frame is a SYSCALL's (RIP = IA32_LSTAR from CPL 3, with IF clear
//!    because the SYSCALL masked it: user mode always runs with IF set), the
//!    VMM finishes the SYSCALL as the CPU would (Intel SDM vol. 2B, SYSCALL,
//!    "Operation"): CS and SS from IA32_STAR at DPL 0, RSP back to the user's,
//!    RIP = IA32_LSTAR, RFLAGS as the SYSCALL left them (RCX and R11 already
//!    are). Any other #PF continues at the kernel's handler with its frame as
//!    pushed. SYSRET and IRET back to user mode work on these hosts unaided.
//!
//! The hook is the last byte of the INT3 padding in front of the syscall
//! entry. Linux fills the gaps in its text with INT3 (vmlinux.lds.S fills
//! `.text` with 0xcc, and the entry code aligns with 0xcc) so that running
//! into them traps: the kernel never executes these bytes. They sit on the
//! entry's own page, so they are mapped wherever the entry is: in every
//! address space a SYSCALL can arrive in, the user page tables of page-table
//! isolation included, which map the entry text for exactly this. No symbol
//! table is needed, and the kernel's code stays as shipped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use kvm_bindings::kvm_segment;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vm_memory::{Bytes, GuestAddress};

use super::{AssistCpu, ExitAssist};
use crate::error::{Error, Result};
use crate::x86::idt::{Gate, GATE_SIZE, INTERRUPT_GATE, PAGE_FAULT_VECTOR};
use crate::x86::{MSR_LSTAR, MSR_STAR, RFLAGS_IF, RFLAGS_RF};

const INT3: u8 = 0xCC;
/// INT3 bytes that must precede the entry to count as padding: four in a row
/// are no instruction's tail in kernel code.
const PADDING: usize = 4;
const PAGE_SIZE: u64 = 4096;
/// #PF error code bit 2: the access came from user mode (SDM 3A, 4.7).
const FAULT_FROM_USER: u64 = 1 << 2;
/// How far from the syscall entry the kernel's #PF handler may be.
const ENTRY_TEXT_REACH: u64 = 1 << 20;
/// A #PF frame: error code, RIP, CS, RFLAGS, RSP, SS (SDM 3A, 6.14.2).
const FRAME_WORDS: usize = 6;

/// Where the hook is, and what it stands in for.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Hook {
    /// The kernel's SYSCALL entry, IA32_LSTAR.
    entry: u64,
    /// The INT3 byte the #PF gate points at.
    address: u64,
    /// The kernel's own #PF handler, where the gate pointed.
    page_fault_handler: u64,
    /// Kernel code selector, IA32_STAR[47:32].
    kernel_cs: u16,
}

#[derive(Default)]
pub struct SyscallAssist {
    hook: RwLock<Option<Hook>>,
    syscalls: AtomicU64,
    page_faults: AtomicU64,
}

impl ExitAssist for SyscallAssist {
    fn name(&self) -> &'static str {
        "syscall"
    }

    fn watched_msr_writes(&self) -> &'static [u32] {
        &[MSR_LSTAR]
    }

    fn msr_write(&self, cpu: &mut AssistCpu<'_>, index: u32, value: u64) -> Result<bool> {
        if index != MSR_LSTAR {
            return Ok(false);
        }
        cpu.ioctls.set_msr(MSR_LSTAR, value)?;
        if value != 0 {
            self.install(cpu, value)?;
        }
        Ok(true)
    }

    fn emulation_failure(&self, cpu: &mut AssistCpu<'_>, _instruction: &[u8]) -> Result<bool> {
        let hook = *self.hook.read().unwrap_or_else(PoisonError::into_inner);
        let Some(hook) = hook.filter(|hook| cpu.regs().rip == hook.address) else {
            return Ok(false);
        };
        let rsp = cpu.regs().rsp;
        let frame: [u64; FRAME_WORDS] = cpu
            .paging()?
            .read_u64s(cpu.memory, rsp)
            .ok_or_else(|| Error::Assist(format!("the #PF frame at {rsp:#x} is not mapped")))?;
        let [error_code, rip, cs, rflags, user_rsp, _ss] = frame;
        let from_syscall = rip == hook.entry
            && cs & 3 == 3
            && error_code & FAULT_FROM_USER != 0
            && rflags & RFLAGS_IF == 0;
        if from_syscall {
            complete_syscall(cpu, &hook, user_rsp, rflags);
            self.syscalls.fetch_add(1, Ordering::Relaxed);
        } else {
            cpu.regs_mut().rip = hook.page_fault_handler;
            self.page_faults.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("syscall", self.syscalls.load(Ordering::Relaxed)),
            ("page_fault", self.page_faults.load(Ordering::Relaxed)),
        ]
    }

    /// The hook: the guest's #PF gate points at it, and only the saved
    /// state knows where the kernel's own handler is.
    fn save_state(&self) -> Result<Value> {
        let hook = *self.hook.read().unwrap_or_else(PoisonError::into_inner);
        serde_json::to_value(hook)
            .map_err(|e| Error::Assist(format!("cannot save the SYSCALL hook: {e}")))
    }

    fn restore_state(&self, state: &Value) -> Result<()> {
        let hook = Option::<Hook>::deserialize(state)
            .map_err(|e| Error::Argument(format!("not a SYSCALL hook state: {e}")))?;
        *self.hook.write().unwrap_or_else(PoisonError::into_inner) = hook;
        Ok(())
    }
}

impl SyscallAssist {
    /// Points the guest's #PF gate at the hook in front of `entry`.
    fn install(&self, cpu: &mut AssistCpu<'_>, entry: u64) -> Result<()> {
        let kernel_cs = (cpu.ioctls.get_msr(MSR_STAR)? >> 32) as u16 & !3;
        let address = hook_before(cpu, entry)?;
        let gate_gpa = page_fault_gate(cpu)?;
        let mut raw = [0u8; GATE_SIZE as usize];
        read_physical(cpu, gate_gpa, &mut raw)?;
        let gate = Gate::from_bytes(raw);
        // One IDT serves every vCPU: the lock makes their LSTAR writes take turns.
        let mut hook = self.hook.write().unwrap_or_else(PoisonError::into_inner);
        let page_fault_handler = match *hook {
            Some(ours) if gate.offset() == ours.address => ours.page_fault_handler,
            _ => kernel_page_fault_handler(&gate, kernel_cs, entry)?,
        };
        cpu.memory
            .write_slice(
                &gate.with_offset(address).to_bytes(),
                GuestAddress(gate_gpa),
            )
            .map_err(|e| Error::Assist(format!("cannot write the guest's #PF gate: {e}")))?;
        *hook = Some(Hook {
            entry,
            address,
            page_fault_handler,
            kernel_cs,
        });
        Ok(())
    }
}

/// The last INT3 of the padding in front of the syscall entry (see above).
fn hook_before(cpu: &AssistCpu<'_>, entry: u64) -> Result<u64> {
    let mut padding = [0u8; PADDING];
    if entry % PAGE_SIZE >= PADDING as u64 {
        cpu.read_virtual(entry - PADDING as u64, &mut padding)?;
    }
    if padding != [INT3; PADDING] {
        return Err(Error::HostLimitation(format!(
            "the guest kernel's syscall entry {entry:#x} is not preceded on its page by \
             INT3 padding (found {padding:02x?}), where pyfastvm hooks system calls on \
             KVM-on-PVM hosts: guest user space cannot run with this kernel here; use a \
             kernel that pads its text with INT3 (as Linux has since 2020), or a host with \
             hardware virtualization"
        )));
    }
    Ok(entry - 1)
}

/// The guest-physical address of IDT entry 14.
fn page_fault_gate(cpu: &AssistCpu<'_>) -> Result<u64> {
    let idt = cpu.sregs().idt;
    let offset = PAGE_FAULT_VECTOR * GATE_SIZE;
    if u64::from(idt.limit) < offset + GATE_SIZE - 1 {
        return Err(Error::HostLimitation(format!(
            "the guest's IDT (limit {:#x}) has no #PF gate when it writes IA32_LSTAR",
            idt.limit
        )));
    }
    let gva = idt.base + offset;
    cpu.paging()?
        .translate(cpu.memory, gva)
        .filter(|gpa| gpa % PAGE_SIZE <= PAGE_SIZE - GATE_SIZE)
        .ok_or_else(|| Error::Assist(format!("the guest's #PF gate at {gva:#x} is not mapped")))
}

fn read_physical(cpu: &AssistCpu<'_>, gpa: u64, buf: &mut [u8]) -> Result<()> {
    cpu.memory
        .read_slice(buf, GuestAddress(gpa))
        .map_err(|e| Error::Assist(format!("cannot read guest memory at {gpa:#x}: {e}")))
}

/// The handler of a gate that is the kernel's #PF gate: a present interrupt
/// gate at DPL 0 through the kernel code selector, to entry code next to the
/// syscall entry (Linux keeps both in its entry text, which page-table
/// isolation maps for user mode).
fn kernel_page_fault_handler(gate: &Gate, kernel_cs: u16, entry: u64) -> Result<u64> {
    let is_kernels = gate.present()
        && gate.gate_type() == INTERRUPT_GATE
        && gate.dpl() == 0
        && gate.selector() & !3 == kernel_cs
        && gate.offset().abs_diff(entry) < ENTRY_TEXT_REACH;
    if !is_kernels {
        return Err(Error::HostLimitation(format!(
            "the guest's #PF gate is not the kernel's when it writes IA32_LSTAR \
             ({gate:x?}, kernel CS {kernel_cs:#x}), so pyfastvm cannot hook system calls"
        )));
    }
    Ok(gate.offset())
}

/// The rest of a SYSCALL that KVM left at CPL 3 (SDM vol. 2B, SYSCALL).
fn complete_syscall(cpu: &mut AssistCpu<'_>, hook: &Hook, user_rsp: u64, rflags: u64) {
    let regs = cpu.regs_mut();
    regs.rip = hook.entry;
    regs.rsp = user_rsp;
    regs.rflags = rflags & !RFLAGS_RF;
    let sregs = cpu.sregs_mut();
    sregs.cs = flat_segment(hook.kernel_cs, CODE_TYPE);
    sregs.ss = flat_segment(hook.kernel_cs + 8, DATA_TYPE);
}

/// Execute/read and read/write data, both accessed (SDM 3A, Table 3-1).
const CODE_TYPE: u8 = 11;
const DATA_TYPE: u8 = 3;

/// The flat DPL-0 segment SYSCALL loads: base 0, 4 GiB limit, 64-bit code
/// (L) or a 32-bit stack (B).
fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    let code = type_ == CODE_TYPE;
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use kvm_bindings::{kvm_sync_regs, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::assist::VcpuIoctls;
    use crate::memory::allocate;

    const PML4: u64 = 0x1000;
    const PDPT: u64 = 0x2000;
    const PD: u64 = 0x3000;
    const IDT: u64 = 0x4000;
    const STACK: u64 = 0x8000;
    const HANDLER: u64 = 0x20_0200;
    const ENTRY: u64 = 0x20_0100;
    const USER_RSP: u64 = 0x7_0000;
    const STAR: u64 = 0x0018_0010 << 32;

    /// MSRs kept in a map: the rare ioctls an assist makes, without KVM.
    #[derive(Default)]
    struct Msrs(HashMap<u32, u64>);

    impl VcpuIoctls for Msrs {
        fn get_msr(&mut self, index: u32) -> Result<u64> {
            Ok(self.0.get(&index).copied().unwrap_or(0))
        }

        fn set_msr(&mut self, index: u32, value: u64) -> Result<()> {
            self.0.insert(index, value);
            Ok(())
        }

        fn set_mxcsr(&mut self, _mxcsr: u32) -> Result<()> {
            unreachable!("the SYSCALL assist never needs the FPU")
        }
    }

    fn write(memory: &GuestMemoryMmap, gpa: u64, value: u64) {
        memory.write_obj(value, GuestAddress(gpa)).unwrap();
    }

    /// A long-mode guest whose first 16 MiB are identity-mapped with 2 MiB
    /// pages, with its #PF gate to HANDLER and INT3 padding before ENTRY.
    fn guest(padding: u8) -> (GuestMemoryMmap, kvm_sync_regs) {
        let memory = allocate(16 << 20, crate::memory::Backing::Anonymous)
            .unwrap()
            .memory;
        write(&memory, PML4, PDPT | 3);
        write(&memory, PDPT, PD | 3);
        for page in 0..8 {
            write(&memory, PD + page * 8, page << 21 | 0x83);
        }
        let gate = Gate::from_bytes([0, 0, 0x10, 0, 0, 0x8e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let gate = gate.with_offset(HANDLER).to_bytes();
        memory
            .write_slice(&gate, GuestAddress(IDT + PAGE_FAULT_VECTOR * GATE_SIZE))
            .unwrap();
        memory
            .write_slice(&[padding; 16], GuestAddress(ENTRY - 16))
            .unwrap();
        let mut state = kvm_sync_regs::default();
        state.sregs.cr0 = 1 << 31 | 1;
        state.sregs.cr3 = PML4;
        state.sregs.efer = 1 << 10 | 1 << 8;
        state.sregs.idt.base = IDT;
        state.sregs.idt.limit = 32 * 16 - 1;
        (memory, state)
    }

    /// Installs the hook as the guest's IA32_LSTAR write would.
    fn hooked(padding: u8) -> Result<(SyscallAssist, GuestMemoryMmap, kvm_sync_regs)> {
        let (memory, mut state) = guest(padding);
        let assist = SyscallAssist::default();
        let mut msrs = Msrs(HashMap::from([(MSR_STAR, STAR)]));
        let mut cpu = AssistCpu::new(&mut state, &memory, &mut msrs);
        assert!(assist.msr_write(&mut cpu, MSR_LSTAR, ENTRY)?);
        assert_eq!(msrs.0.get(&MSR_LSTAR), Some(&ENTRY));
        Ok((assist, memory, state))
    }

    /// The vCPU at the hook, with `frame` pushed by the #PF delivery.
    fn at_hook(memory: &GuestMemoryMmap, state: &mut kvm_sync_regs, frame: [u64; 6]) {
        for (i, word) in frame.iter().enumerate() {
            write(memory, STACK + 8 * i as u64, *word);
        }
        state.regs.rip = ENTRY - 1;
        state.regs.rsp = STACK;
    }

    fn gate_offset(memory: &GuestMemoryMmap) -> u64 {
        let mut raw = [0u8; 16];
        let at = IDT + PAGE_FAULT_VECTOR * GATE_SIZE;
        memory.read_slice(&mut raw, GuestAddress(at)).unwrap();
        Gate::from_bytes(raw).offset()
    }

    #[test]
    fn the_lstar_write_points_the_page_fault_gate_at_the_padding() {
        let (_, memory, _) = hooked(INT3).unwrap();
        assert_eq!(gate_offset(&memory), ENTRY - 1);
    }

    #[test]
    fn a_syscall_frame_completes_the_syscall_at_cpl0() {
        let (assist, memory, mut state) = hooked(INT3).unwrap();
        let (user_cs, user_ss, flags_after_mask) = (0x2b, 0x23, 0x2);
        at_hook(
            &memory,
            &mut state,
            [0x15, ENTRY, user_cs, flags_after_mask, USER_RSP, user_ss],
        );
        let mut msrs = Msrs::default();
        let mut cpu = AssistCpu::new(&mut state, &memory, &mut msrs);
        assert!(assist.emulation_failure(&mut cpu, &[INT3]).unwrap());
        assert_eq!(
            cpu.changed(),
            u64::from(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS)
        );
        let (regs, sregs) = (cpu.regs(), cpu.sregs());
        assert_eq!((regs.rip, regs.rsp, regs.rflags), (ENTRY, USER_RSP, 0x2));
        assert_eq!((sregs.cs.selector, sregs.cs.dpl, sregs.cs.l), (0x10, 0, 1));
        assert_eq!((sregs.ss.selector, sregs.ss.dpl, sregs.ss.db), (0x18, 0, 1));
        assert_eq!(assist.counts(), [("syscall", 1), ("page_fault", 0)]);
    }

    #[test]
    fn any_other_page_fault_goes_on_to_the_kernels_handler() {
        let (assist, memory, mut state) = hooked(INT3).unwrap();
        // A user-mode read of a missing page: user mode runs with IF set.
        at_hook(
            &memory,
            &mut state,
            [0x4, 0x40_1000, 0x2b, 0x202, USER_RSP, 0x23],
        );
        let sregs_before = state.sregs;
        let mut msrs = Msrs::default();
        let mut cpu = AssistCpu::new(&mut state, &memory, &mut msrs);
        assert!(assist.emulation_failure(&mut cpu, &[INT3]).unwrap());
        assert_eq!(cpu.changed(), u64::from(KVM_SYNC_X86_REGS));
        assert_eq!((cpu.regs().rip, cpu.regs().rsp), (HANDLER, STACK));
        assert_eq!(cpu.sregs().cs.selector, sregs_before.cs.selector);
        assert_eq!(assist.counts(), [("syscall", 0), ("page_fault", 1)]);
    }

    #[test]
    fn an_int3_elsewhere_is_not_the_hooks() {
        let (assist, memory, mut state) = hooked(INT3).unwrap();
        state.regs.rip = 0x30_0000;
        let mut msrs = Msrs::default();
        let mut cpu = AssistCpu::new(&mut state, &memory, &mut msrs);
        assert!(!assist.emulation_failure(&mut cpu, &[INT3]).unwrap());
        assert_eq!(cpu.changed(), 0);
    }

    #[test]
    fn a_restored_assist_knows_the_hook() {
        let (assist, memory, mut state) = hooked(INT3).unwrap();
        let restored = SyscallAssist::default();
        restored
            .restore_state(&assist.save_state().unwrap())
            .unwrap();
        at_hook(
            &memory,
            &mut state,
            [0x4, 0x40_1000, 0x2b, 0x202, USER_RSP, 0x23],
        );
        let mut msrs = Msrs::default();
        let mut cpu = AssistCpu::new(&mut state, &memory, &mut msrs);
        assert!(restored.emulation_failure(&mut cpu, &[INT3]).unwrap());
        assert_eq!(cpu.regs().rip, HANDLER);
    }

    #[test]
    fn an_entry_without_int3_padding_is_a_host_limitation() {
        let nop = 0x90;
        assert!(matches!(hooked(nop), Err(Error::HostLimitation(_))));
    }
}
