//! Exit assists: guest work that KVM hands back to user space on some hosts,
//! completed by the VMM as the CPU would have done it, on the vCPU thread and
//! without Python. Which assists a VM has is chosen once, from the host
//! profile (`pyfastvm.host`), with `vm.enable_exit_assists(...)`; on hardware
//! KVM a VM has none, and its run loop never reads registers on an exit.

mod fwait;
mod int3;
mod ldmxcsr;
mod syscall;

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_enable_cap, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_sync_regs, Msrs,
    KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER, KVM_SYNC_X86_EVENTS, KVM_SYNC_X86_REGS,
    KVM_SYNC_X86_SREGS,
};
use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd};
use serde_json::Value;
use vm_memory::GuestMemoryMmap;

use crate::error::{Error, Result};
use crate::regs::put_mxcsr;
use crate::x86::paging::Paging;

/// The ioctls an assist may need beyond the synced registers; rare by design
/// (each costs about 5 microseconds on a PVM host).
pub trait VcpuIoctls {
    fn get_msr(&mut self, index: u32) -> Result<u64>;
    fn set_msr(&mut self, index: u32, value: u64) -> Result<()>;
    fn set_mxcsr(&mut self, mxcsr: u32) -> Result<()>;
}

impl VcpuIoctls for VcpuFd {
    fn get_msr(&mut self, index: u32) -> Result<u64> {
        let mut msrs = one_msr(index, 0)?;
        let read = self
            .get_msrs(&mut msrs)
            .map_err(Error::kvm("KVM_GET_MSRS"))?;
        match read {
            1 => Ok(msrs.as_slice()[0].data),
            _ => Err(Error::MsrRefused {
                verb: "read",
                index,
                done: 0,
                total: 1,
            }),
        }
    }

    fn set_msr(&mut self, index: u32, value: u64) -> Result<()> {
        let written = self
            .set_msrs(&one_msr(index, value)?)
            .map_err(Error::kvm("KVM_SET_MSRS"))?;
        match written {
            1 => Ok(()),
            _ => Err(Error::MsrRefused {
                verb: "write",
                index,
                done: 0,
                total: 1,
            }),
        }
    }

    /// Through XSAVE: KVM_SET_FPU leaves MXCSR out.
    fn set_mxcsr(&mut self, mxcsr: u32) -> Result<()> {
        let mut xsave = self.get_xsave().map_err(Error::kvm("KVM_GET_XSAVE"))?;
        put_mxcsr(&mut xsave, mxcsr);
        // SAFETY: KVM reads the 4096 bytes of a kvm_xsave; the state is
        // larger only with dynamic XSTATE features (AMX) that the VMM asked
        // for with arch_prctl, which pyfastvm never does.
        unsafe { self.set_xsave(&xsave) }.map_err(Error::kvm("KVM_SET_XSAVE"))
    }
}

fn one_msr(index: u32, data: u64) -> Result<Msrs> {
    Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .map_err(|e| Error::Device(format!("MSR list: {e:?}")))
}

/// The vCPU as an assist sees it: the registers that KVM_CAP_SYNC_REGS copies
/// into the kvm_run area on every exit (and back, where changed, on the next
/// entry), guest memory, and the rarer ioctls.
pub struct AssistCpu<'a> {
    state: &'a mut kvm_sync_regs,
    changed: u64,
    pub memory: &'a GuestMemoryMmap,
    pub ioctls: &'a mut dyn VcpuIoctls,
}

impl<'a> AssistCpu<'a> {
    pub fn new(
        state: &'a mut kvm_sync_regs,
        memory: &'a GuestMemoryMmap,
        ioctls: &'a mut dyn VcpuIoctls,
    ) -> Self {
        AssistCpu {
            state,
            changed: 0,
            memory,
            ioctls,
        }
    }

    pub fn regs(&self) -> &kvm_regs {
        &self.state.regs
    }

    pub fn sregs(&self) -> &kvm_sregs {
        &self.state.sregs
    }

    pub fn regs_mut(&mut self) -> &mut kvm_regs {
        self.changed |= u64::from(KVM_SYNC_X86_REGS);
        &mut self.state.regs
    }

    pub fn sregs_mut(&mut self) -> &mut kvm_sregs {
        self.changed |= u64::from(KVM_SYNC_X86_SREGS);
        &mut self.state.sregs
    }

    pub fn events_mut(&mut self) -> &mut kvm_bindings::kvm_vcpu_events {
        self.changed |= u64::from(KVM_SYNC_X86_EVENTS);
        &mut self.state.events
    }

    /// The KVM_SYNC_X86_* bits of what the assist changed.
    pub fn changed(&self) -> u64 {
        self.changed
    }

    /// The guest's current page tables; an error outside 64-bit mode.
    pub fn paging(&self) -> Result<Paging> {
        Paging::of(&self.state.sregs).ok_or_else(|| {
            Error::Assist("the vCPU is not in 64-bit mode, where exit assists work".into())
        })
    }

    /// Reads guest-virtual memory through the guest's page tables.
    pub fn read_virtual(&self, gva: u64, buf: &mut [u8]) -> Result<()> {
        self.paging()?
            .read(self.memory, gva, buf)
            .ok_or_else(|| Error::Assist(format!("guest address {gva:#x} is not mapped")))
    }

    /// Steps past the current instruction, `length` bytes long.
    pub fn skip_instruction(&mut self, length: usize) {
        let regs = self.regs_mut();
        regs.rip = regs.rip.wrapping_add(length as u64);
    }
}

/// One kind of help a host needs; see the modules for each.
pub trait ExitAssist: Send + Sync {
    fn name(&self) -> &'static str;

    /// MSRs whose guest writes this assist must see (KVM_X86_SET_MSR_FILTER).
    fn watched_msr_writes(&self) -> &'static [u32] {
        &[]
    }

    /// Completes the instruction KVM could not emulate; false if it is not
    /// this assist's.
    fn emulation_failure(&self, _cpu: &mut AssistCpu<'_>, _instruction: &[u8]) -> Result<bool> {
        Ok(false)
    }

    /// Takes the guest's write of `value` to watched MSR `index`; false if it
    /// is not this assist's.
    fn msr_write(&self, _cpu: &mut AssistCpu<'_>, _index: u32, _value: u64) -> Result<bool> {
        Ok(false)
    }

    /// How often it did each kind of work, by name.
    fn counts(&self) -> Vec<(&'static str, u64)>;

    /// What it learned of the guest, for a snapshot: None for an assist
    /// that learns nothing.
    fn save_state(&self) -> Result<Value> {
        Ok(Value::Null)
    }

    /// Takes back what `save_state` returned, in a restored VM.
    fn restore_state(&self, _state: &Value) -> Result<()> {
        Ok(())
    }
}

type MakeAssist = fn() -> Box<dyn ExitAssist>;

/// Every assist pyfastvm has, in the order they are asked: the SYSCALL
/// assist's hook is an INT3 byte, so it goes before the INT3 assist.
const KNOWN: &[(&str, MakeAssist)] = &[
    ("syscall", || Box::new(syscall::SyscallAssist::default())),
    ("int3", || Box::new(int3::Int3Assist::default())),
    ("fwait", || Box::new(fwait::FwaitAssist::default())),
    ("ldmxcsr", || Box::new(ldmxcsr::LdmxcsrAssist::default())),
];

/// The assists of one VM, chosen once.
pub struct ExitAssists {
    assists: Vec<Box<dyn ExitAssist>>,
}

impl ExitAssists {
    /// The named assists, in pyfastvm's order whatever the order of `names`.
    pub fn new(names: &[String]) -> Result<Self> {
        if let Some(unknown) = names
            .iter()
            .find(|name| !KNOWN.iter().any(|(known, _)| known == name))
        {
            let known: Vec<&str> = KNOWN.iter().map(|(name, _)| *name).collect();
            return Err(Error::Argument(format!(
                "unknown exit assist {unknown:?}: pyfastvm has {}",
                known.join(", ")
            )));
        }
        let assists = KNOWN
            .iter()
            .filter(|(known, _)| names.iter().any(|name| name == known))
            .map(|(_, make)| make())
            .collect();
        Ok(ExitAssists { assists })
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.assists.iter().map(|a| a.name()).collect()
    }

    /// Whether the run loop needs the registers on each exit.
    pub fn is_empty(&self) -> bool {
        self.assists.is_empty()
    }

    /// Makes KVM hand the watched MSR writes to user space: guest writes to
    /// them are refused by a filter and exit with KVM_EXIT_X86_WRMSR
    /// (Documentation/virt/kvm/api.rst, KVM_X86_SET_MSR_FILTER).
    pub fn install(&self, vm: &VmFd) -> Result<()> {
        let watched: Vec<u32> = self
            .assists
            .iter()
            .flat_map(|a| a.watched_msr_writes())
            .copied()
            .collect();
        if watched.is_empty() {
            return Ok(());
        }
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_X86_USER_SPACE_MSR,
            ..Default::default()
        };
        cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_FILTER);
        vm.enable_cap(&cap)
            .map_err(Error::kvm("KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)"))?;
        let deny = [0u8];
        let ranges: Vec<MsrFilterRange<'_>> = watched
            .iter()
            .map(|&base| MsrFilterRange {
                flags: MsrFilterRangeFlags::WRITE,
                base,
                msr_count: 1,
                bitmap: &deny,
            })
            .collect();
        vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
            .map_err(Error::kvm("KVM_X86_SET_MSR_FILTER"))
    }

    /// Asks each assist in turn to complete a failed emulation.
    pub fn emulation_failure(&self, cpu: &mut AssistCpu<'_>, instruction: &[u8]) -> Result<bool> {
        for assist in &self.assists {
            if assist.emulation_failure(cpu, instruction)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Hands a watched MSR write to the assist that watches it.
    pub fn msr_write(&self, cpu: &mut AssistCpu<'_>, index: u32, value: u64) -> Result<bool> {
        for assist in &self.assists {
            if assist.msr_write(cpu, index, value)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.assists.iter().flat_map(|a| a.counts()).collect()
    }

    /// Each assist's state by its name.
    pub fn save_state(&self) -> Result<Value> {
        let states = self
            .assists
            .iter()
            .map(|a| Ok((a.name().to_owned(), a.save_state()?)))
            .collect::<Result<serde_json::Map<_, _>>>()?;
        Ok(Value::Object(states))
    }

    /// Gives each assist its state from `save_state`; an assist this VM
    /// lacks is an error, one missing from `state` learns it all again.
    pub fn restore_state(&self, state: &Value) -> Result<()> {
        let Value::Object(states) = state else {
            return Err(Error::Argument(format!(
                "exit assist state must map names to states, not {state}"
            )));
        };
        for (name, assist_state) in states {
            let assist = self
                .assists
                .iter()
                .find(|a| a.name() == name)
                .ok_or_else(|| {
                    Error::Argument(format!(
                        "the saved state has exit assist {name:?}, which this VM does not use: \
                         restore on a host of the same kind"
                    ))
                })?;
            assist.restore_state(assist_state)?;
        }
        Ok(())
    }
}
