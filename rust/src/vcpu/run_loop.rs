//! The KVM_RUN loop of one vCPU. PIO and MMIO exits go to the devices on the
//! buses, work the host's exit assists take goes to them, and only what
//! Python must see ends the loop: exactly one ioctl, KVM_RUN, per exit on the
//! device path.

use std::sync::atomic::Ordering;

use kvm_bindings::{KVM_SYNC_X86_EVENTS, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use pyo3::prelude::*;

use super::VcpuShared;
use crate::assist::AssistCpu;
use crate::bus::AddressSpace;
use crate::devices::IoAction;
use crate::error::{Error, Result};
use crate::exit::Exit;

/// What the loop does after an exit.
enum Next {
    /// Re-enter the guest.
    Continue,
    /// End `run()` with this exit.
    Return(Exit),
    /// KVM could not emulate an instruction; an assist may complete it.
    EmulationFailure(Exit),
    /// The guest wrote an MSR an assist watches (the write is accepted).
    MsrWrite { index: u32, value: u64 },
}

/// The registers KVM_CAP_SYNC_REGS puts in the kvm_run area for the assists.
const SYNCED: [(u32, SyncReg); 3] = [
    (KVM_SYNC_X86_REGS, SyncReg::Register),
    (KVM_SYNC_X86_SREGS, SyncReg::SystemRegister),
    (KVM_SYNC_X86_EVENTS, SyncReg::VcpuEvents),
];

impl VcpuShared {
    /// Runs the guest until something Python must see.
    pub(super) fn run_loop(&self, fd: &mut VcpuFd) -> Result<Exit> {
        let assists = self.machine.assists().filter(|a| !a.is_empty());
        if assists.is_some() {
            for (_, reg) in SYNCED {
                fd.set_sync_valid_reg(reg);
            }
        }
        loop {
            let next = match fd.run() {
                Ok(exit) => self.handle_exit(exit)?,
                Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => self.on_interrupt()?,
                Err(source) => {
                    return Err(Error::Kvm {
                        op: "KVM_RUN",
                        source,
                    })
                }
            };
            match next {
                Next::Continue => {}
                Next::Return(exit) => return Ok(exit),
                Next::EmulationFailure(exit) => {
                    let insn = exit.instruction.clone().unwrap_or_default();
                    let assisted = assists
                        .map(|a| assist(fd, self, |cpu| a.emulation_failure(cpu, &insn)))
                        .transpose()?;
                    if assisted != Some(true) {
                        return Ok(exit);
                    }
                }
                Next::MsrWrite { index, value } => {
                    let taken = assists
                        .map(|a| assist(fd, self, |cpu| a.msr_write(cpu, index, value)))
                        .transpose()?;
                    if taken != Some(true) {
                        return Err(Error::Assist(format!(
                            "the guest wrote MSR {index:#x}, which no exit assist takes"
                        )));
                    }
                }
            }
        }
    }

    fn on_interrupt(&self) -> Result<Next> {
        self.run_area.immediate_exit().store(0, Ordering::SeqCst);
        if self.stop_requested.swap(false, Ordering::SeqCst) {
            return Ok(Next::Return(Exit::new("stop")));
        }
        // A signal for Python (Ctrl-C's SIGINT) may be why KVM_RUN returned.
        Python::attach(|py| py.check_signals())?;
        Ok(Next::Continue)
    }

    fn handle_exit(&self, exit: VcpuExit<'_>) -> Result<Next> {
        let stop = |exit| Ok(Next::Return(exit));
        match exit {
            VcpuExit::IoOut(port, data) => {
                let size = self.run_area.io_size();
                self.write_all(AddressSpace::Pio, port.into(), size, data.chunks(size))
            }
            VcpuExit::IoIn(port, data) => {
                let size = self.run_area.io_size();
                self.read_all(AddressSpace::Pio, port.into(), size, data.chunks_mut(size))
            }
            VcpuExit::MmioWrite(address, data) => self.write_all(
                AddressSpace::Mmio,
                address,
                data.len(),
                std::iter::once(data),
            ),
            VcpuExit::MmioRead(address, data) => self.read_all(
                AddressSpace::Mmio,
                address,
                data.len(),
                std::iter::once(data),
            ),
            VcpuExit::X86Wrmsr(write) => {
                *write.error = 0;
                Ok(Next::MsrWrite {
                    index: write.index,
                    value: write.data,
                })
            }
            VcpuExit::Intr => Ok(Next::Continue),
            VcpuExit::Hlt => stop(Exit::new("hlt")),
            VcpuExit::Shutdown => stop(Exit::new("shutdown")),
            VcpuExit::FailEntry(reason, _cpu) => stop(Exit {
                hardware_entry_failure_reason: Some(reason),
                ..Exit::new("fail_entry")
            }),
            VcpuExit::InternalError => {
                let exit = self.run_area.internal_error();
                Ok(if exit.is_emulation_failure() {
                    Next::EmulationFailure(exit)
                } else {
                    Next::Return(exit)
                })
            }
            VcpuExit::SystemEvent(event_type, data) => stop(Exit {
                event_type: Some(event_type),
                data: data.to_vec(),
                ..Exit::new("system_event")
            }),
            _ => stop(Exit {
                exit_reason: Some(self.run_area.exit_reason()),
                ..Exit::new("unhandled")
            }),
        }
    }

    /// Delivers the writes of one exit (several for `rep outs`) to the device
    /// at `address`, stopping early if the device ends the run.
    fn write_all<'a>(
        &self,
        space: AddressSpace,
        address: u64,
        size: usize,
        accesses: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Next> {
        let Some((offset, device)) = self.machine.find_device(space, address) else {
            return self.unclaimed(space, "write", address, size);
        };
        for data in accesses {
            if let IoAction::Stop(reason) = device.write(offset, data)? {
                return Ok(Next::Return(Exit::stopped_by(reason, device.name())));
            }
        }
        Ok(Next::Continue)
    }

    /// Fills the reads of one exit (several for `rep ins`) from the device.
    fn read_all<'a>(
        &self,
        space: AddressSpace,
        address: u64,
        size: usize,
        mut accesses: impl Iterator<Item = &'a mut [u8]>,
    ) -> Result<Next> {
        let Some((offset, device)) = self.machine.find_device(space, address) else {
            for data in accesses.by_ref() {
                data.fill(0xff);
            }
            return self.unclaimed(space, "read", address, size);
        };
        for data in accesses {
            if let IoAction::Stop(reason) = device.read(offset, data)? {
                return Ok(Next::Return(Exit::stopped_by(reason, device.name())));
            }
        }
        Ok(Next::Continue)
    }

    fn unclaimed(
        &self,
        space: AddressSpace,
        access: &'static str,
        address: u64,
        size: usize,
    ) -> Result<Next> {
        if self.machine.ignore_unclaimed {
            return Ok(Next::Continue);
        }
        Err(Error::UnclaimedAccess {
            space: space.name(),
            access,
            address,
            size,
        })
    }
}

/// Lets the assists work on the registers KVM synced at this exit; what they
/// change goes back to KVM on the next KVM_RUN, with no ioctl of its own.
fn assist(
    fd: &mut VcpuFd,
    vcpu: &VcpuShared,
    work: impl FnOnce(&mut AssistCpu<'_>) -> Result<bool>,
) -> Result<bool> {
    let mut state = fd.sync_regs();
    let mut cpu = AssistCpu::new(&mut state, &vcpu.machine.ram, fd);
    let done = work(&mut cpu)?;
    let changed = cpu.changed();
    if changed != 0 {
        *fd.sync_regs_mut() = state;
        for (bit, reg) in SYNCED {
            if changed & u64::from(bit) != 0 {
                fd.set_sync_dirty_reg(reg);
            }
        }
    }
    Ok(done)
}
