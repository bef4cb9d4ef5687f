//! The KVM_RUN loop of one vCPU. `dispatch` sends PIO and MMIO exits to the
//! devices and sorts the rest; work the host's exit assists take goes to
//! them; only what Python must see ends the loop: exactly one ioctl,
//! KVM_RUN, per exit on the device path.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};

use kvm_bindings::{KVM_SYNC_X86_EVENTS, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use pyo3::prelude::*;

use super::{Request, VcpuShared};
use crate::assist::AssistCpu;
use crate::device_manager::{AddressSpace, DeviceManager, Registered};
use crate::devices::IoAction;
use crate::error::{Error, Result};
use crate::exit::{Exit, ExitReason};

/// What the loop does after an exit.
#[derive(Debug)]
pub(crate) enum Next {
    /// Re-enter the guest.
    Continue,
    /// End `run()` with this exit.
    Return(Exit),
    /// KVM could not emulate an instruction; an assist may complete it.
    EmulationFailure(Exit),
    /// The guest wrote an MSR an assist watches (the write is accepted).
    MsrWrite { index: u32, value: u64 },
}

/// What `dispatch` reads from the kvm_run area beyond the exit itself.
pub(crate) trait ExitDetails {
    /// The access size of a KVM_EXIT_IO (1, 2 or 4).
    fn io_size(&self) -> usize;
    /// Details of a KVM_EXIT_INTERNAL_ERROR.
    fn internal_error(&self) -> Exit;
    /// The raw KVM_EXIT_* number.
    fn exit_reason(&self) -> u32;
}

/// The devices an exit may go to.
pub(crate) struct Devices<'a> {
    pub manager: &'a RwLock<DeviceManager>,
    /// Unclaimed reads return 0xff and writes are dropped, as on a PC.
    pub ignore_unclaimed: bool,
}

/// Handles one exit: device accesses go to their device, the rest become
/// what the loop does next.
pub(crate) fn dispatch(
    exit: VcpuExit<'_>,
    details: &dyn ExitDetails,
    devices: &Devices<'_>,
) -> Result<Next> {
    let stop = |reason| Ok(Next::Return(Exit::new(reason)));
    match exit {
        VcpuExit::IoOut(port, data) => {
            let size = details.io_size();
            devices.write(AddressSpace::Pio, port.into(), size, data.chunks(size))
        }
        VcpuExit::IoIn(port, data) => {
            let size = details.io_size();
            devices.read(AddressSpace::Pio, port.into(), size, data.chunks_mut(size))
        }
        VcpuExit::MmioWrite(address, data) => devices.write(
            AddressSpace::Mmio,
            address,
            data.len(),
            std::iter::once(data),
        ),
        VcpuExit::MmioRead(address, data) => {
            let size = data.len();
            devices.read(AddressSpace::Mmio, address, size, std::iter::once(data))
        }
        VcpuExit::X86Wrmsr(write) => {
            *write.error = 0;
            Ok(Next::MsrWrite {
                index: write.index,
                value: write.data,
            })
        }
        VcpuExit::Intr => Ok(Next::Continue),
        VcpuExit::Hlt => stop(ExitReason::Halted),
        VcpuExit::Shutdown => stop(ExitReason::Shutdown),
        VcpuExit::FailEntry(reason, _cpu) => Ok(Next::Return(Exit {
            hardware_entry_failure_reason: Some(reason),
            ..Exit::new(ExitReason::FailEntry)
        })),
        VcpuExit::InternalError => {
            let exit = details.internal_error();
            Ok(if exit.is_emulation_failure() {
                Next::EmulationFailure(exit)
            } else {
                Next::Return(exit)
            })
        }
        VcpuExit::SystemEvent(event_type, data) => Ok(Next::Return(Exit {
            event_type: Some(event_type),
            data: data.to_vec(),
            ..Exit::new(ExitReason::SystemEvent)
        })),
        _ => Ok(Next::Return(Exit {
            exit_reason: Some(details.exit_reason()),
            ..Exit::new(ExitReason::Unhandled)
        })),
    }
}

impl Devices<'_> {
    /// The device at `address`, cloned out so no lock is held while it runs
    /// (a Python device may add devices of its own).
    fn find(&self, space: AddressSpace, address: u64) -> Option<(u64, Arc<Registered>)> {
        let manager = self.manager.read().unwrap_or_else(PoisonError::into_inner);
        manager
            .find(space, address)
            .map(|(offset, device)| (offset, device.clone()))
    }

    /// Delivers the writes of one exit (several for `rep outs`) to the device
    /// at `address`, stopping early if the device ends the run.
    fn write<'a>(
        &self,
        space: AddressSpace,
        address: u64,
        size: usize,
        accesses: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Next> {
        let Some((offset, registered)) = self.find(space, address) else {
            return self.unclaimed(space, "write", address, size);
        };
        for data in accesses {
            if let IoAction::Stop(reason) = registered.device.write(offset, data)? {
                return Ok(Next::Return(Exit::stopped_by(reason, &registered.id)));
            }
        }
        Ok(Next::Continue)
    }

    /// Fills the reads of one exit (several for `rep ins`) from the device.
    fn read<'a>(
        &self,
        space: AddressSpace,
        address: u64,
        size: usize,
        mut accesses: impl Iterator<Item = &'a mut [u8]>,
    ) -> Result<Next> {
        let Some((offset, registered)) = self.find(space, address) else {
            for data in accesses.by_ref() {
                data.fill(0xff);
            }
            return self.unclaimed(space, "read", address, size);
        };
        for data in accesses {
            if let IoAction::Stop(reason) = registered.device.read(offset, data)? {
                return Ok(Next::Return(Exit::stopped_by(reason, &registered.id)));
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
        if self.ignore_unclaimed {
            return Ok(Next::Continue);
        }
        Err(Error::UnclaimedAccess {
            space: space.label(),
            access,
            address,
            size,
        })
    }
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
        let assists = self.vm.assists().filter(|a| !a.is_empty());
        if assists.is_some() {
            for (_, reg) in SYNCED {
                fd.set_sync_valid_reg(reg);
            }
        }
        let devices = Devices {
            manager: &self.vm.devices,
            ignore_unclaimed: self.vm.ignore_unclaimed,
        };
        loop {
            let next = match fd.run() {
                Ok(exit) => dispatch(exit, &self.run_area, &devices)?,
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

    /// KVM_RUN returned early: by `immediate_exit` (after completing any I/O
    /// the last exit left, so the vCPU is at a clean point) or a signal.
    fn on_interrupt(&self) -> Result<Next> {
        self.run_area.immediate_exit().store(0, Ordering::SeqCst);
        match self.take_request() {
            Some(Request::Stop) => return Ok(Next::Return(Exit::new(ExitReason::Stopped))),
            Some(Request::Pause) => return Ok(Next::Return(Exit::new(ExitReason::Paused))),
            None => {}
        }
        // A signal for Python (Ctrl-C's SIGINT) may be why KVM_RUN returned.
        Python::attach(|py| py.check_signals())?;
        Ok(Next::Continue)
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
    let mut cpu = AssistCpu::new(&mut state, &vcpu.vm.ram, fd);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_manager::Registration;
    use crate::devices::{DebugExit, Sink};

    /// A kvm_run area as a test wants it.
    struct Details;

    impl ExitDetails for Details {
        fn io_size(&self) -> usize {
            1
        }

        fn internal_error(&self) -> Exit {
            Exit::internal_error(1, vec![], Some(vec![0x0f, 0x0b]))
        }

        fn exit_reason(&self) -> u32 {
            99
        }
    }

    fn devices() -> RwLock<DeviceManager> {
        let mut manager = DeviceManager::new();
        for (id, base, device) in [
            (
                "sink",
                0x80,
                Arc::new(Sink) as Arc<dyn crate::devices::Device>,
            ),
            ("done", 0xf4, Arc::new(DebugExit)),
        ] {
            let registration = Registration {
                id: Some(id.into()),
                space: AddressSpace::Pio,
                base: Some(base),
                length: 1,
                gsi: None,
                device,
                handle: None,
            };
            manager.add(registration).unwrap();
        }
        RwLock::new(manager)
    }

    fn run(exit: VcpuExit<'_>, ignore_unclaimed: bool) -> Result<Next> {
        let manager = devices();
        let devices = Devices {
            manager: &manager,
            ignore_unclaimed,
        };
        dispatch(exit, &Details, &devices)
    }

    #[test]
    fn a_device_that_ends_the_run_is_named() {
        let Ok(Next::Return(exit)) = run(VcpuExit::IoOut(0xf4, &[7]), false) else {
            panic!("the debug-exit write did not end the run");
        };
        assert_eq!(exit.reason, ExitReason::DebugExit);
        assert_eq!(
            (exit.status, exit.device.as_deref()),
            (Some(7), Some("done"))
        );
    }

    #[test]
    fn device_accesses_continue_the_run() {
        assert!(matches!(
            run(VcpuExit::IoOut(0x80, &[1, 2]), false),
            Ok(Next::Continue)
        ));
        let mut data = [0xaa];
        assert!(matches!(
            run(VcpuExit::IoIn(0x80, &mut data), false),
            Ok(Next::Continue)
        ));
        assert_eq!(data, [0]);
    }

    #[test]
    fn unclaimed_accesses_fail_unless_ignored() {
        let mut data = [0];
        assert!(matches!(
            run(VcpuExit::IoIn(0x81, &mut data), false),
            Err(Error::UnclaimedAccess { address: 0x81, .. })
        ));
        assert!(matches!(
            run(VcpuExit::IoIn(0x81, &mut data), true),
            Ok(Next::Continue)
        ));
        assert_eq!(data, [0xff]);
    }

    #[test]
    fn emulation_failures_go_to_the_assists_and_the_rest_to_python() {
        assert!(matches!(
            run(VcpuExit::InternalError, false),
            Ok(Next::EmulationFailure(_))
        ));
        let Ok(Next::Return(exit)) = run(VcpuExit::Shutdown, false) else {
            panic!("a shutdown must end the run");
        };
        assert_eq!(exit.reason, ExitReason::Shutdown);
        let Ok(Next::Return(exit)) = run(VcpuExit::Unknown, false) else {
            panic!("an unknown exit must end the run");
        };
        assert_eq!(
            (exit.reason, exit.exit_reason),
            (ExitReason::Unhandled, Some(99))
        );
    }
}
