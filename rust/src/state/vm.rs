//! What KVM keeps for a whole VM: the in-kernel PICs and I/O APIC, the PIT
//! and the kvmclock. Its vCPUs must be stopped while it is saved or restored.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::{needs_part, unless_absent};
use crate::error::{Error, Result};

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    /// KVM_GET_CLOCK as read; only `clock` (nanoseconds) is restored.
    pub clock: kvm_clock_data,
    /// The master PIC, the slave PIC and the I/O APIC; None without the
    /// in-kernel irqchip (vm.create_irqchip()).
    pub irqchips: Option<[kvm_irqchip; 3]>,
    /// None without the in-kernel PIT (vm.create_pit()).
    pub pit: Option<kvm_pit_state2>,
}

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

pub fn save(vm: &VmFd) -> Result<VmState> {
    Ok(VmState {
        clock: vm.get_clock().map_err(Error::kvm("KVM_GET_CLOCK"))?,
        irqchips: save_irqchips(vm)?,
        pit: unless_absent(vm.get_pit2(), "KVM_GET_PIT2", libc::ENXIO)?,
    })
}

fn save_irqchips(vm: &VmFd) -> Result<Option<[kvm_irqchip; 3]>> {
    let mut chips = CHIPS.map(|chip_id| kvm_irqchip {
        chip_id,
        ..Default::default()
    });
    for chip in &mut chips {
        if unless_absent(vm.get_irqchip(chip), "KVM_GET_IRQCHIP", libc::ENXIO)?.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(chips))
}

pub fn restore(vm: &VmFd, state: &VmState) -> Result<()> {
    // The interrupt controllers before the PIT: KVM_SET_PIT2 re-arms the
    // PIT's timer, whose IRQ 0 must land in the restored controllers, not
    // in ones a later KVM_SET_IRQCHIP would overwrite.
    for chip in state.irqchips.iter().flatten() {
        vm.set_irqchip(chip).map_err(needs_part(
            "KVM_SET_IRQCHIP",
            libc::ENXIO,
            "vm.create_irqchip()",
        ))?;
    }
    if let Some(pit) = &state.pit {
        vm.set_pit2(pit)
            .map_err(needs_part("KVM_SET_PIT2", libc::ENXIO, "vm.create_pit()"))?;
    }
    // The guest's clock goes on from the saved value, as if the VM had been
    // paused, like its TSC and PM timer. No flags: KVM_CLOCK_REALTIME would
    // have KVM add the wall time since the save, and older kernels refuse
    // any flag.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(Error::kvm("KVM_SET_CLOCK"))
}
