//! A vCPU's MSRs for its saved state: every index KVM lists for saving that
//! it will also read back, restored in the order their side effects need.

use std::collections::BTreeMap;

use kvm_bindings::kvm_msr_entry;
use kvm_ioctls::VcpuFd;

use crate::error::{Error, Result};
use crate::vcpu::{check_msr_count, msr_list};

/// KVM_GET/SET_MSRS refuse 256 entries or more in one call (MAX_IO_MSRS).
const MSRS_PER_CALL: usize = 255;

const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Written after all the others: a TSC deadline is armed against the guest
/// TSC, so it must see the restored IA32_TSC, or its timer is set wrong or
/// not at all (Firecracker found the same).
const DEFERRED: [u32; 1] = [MSR_IA32_TSC_DEADLINE];

/// The MSRs read, and the listed indices KVM refused to read on this vCPU.
pub struct ReadMsrs {
    pub values: BTreeMap<u32, u64>,
    pub refused: Vec<u32>,
}

/// Reads every MSR in `indices` that KVM will read. KVM_GET_MSRS stops at
/// the first index it refuses (some listed MSRs depend on features the
/// host or the vCPU's CPUID lacks), so a refusal is recorded and the read
/// goes on after it: one call per refusal, not one per MSR.
pub fn read_all(fd: &VcpuFd, indices: &[u32]) -> Result<ReadMsrs> {
    let mut read = ReadMsrs {
        values: BTreeMap::new(),
        refused: Vec::new(),
    };
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSRS_PER_CALL)];
        let (done, entries) = read_some(fd, chunk)?;
        read.values
            .extend(entries[..done].iter().map(|e| (e.index, e.data)));
        let next = match chunk.get(done) {
            Some(&refused) => {
                read.refused.push(refused);
                done + 1
            }
            None => done,
        };
        rest = &rest[next..];
    }
    Ok(read)
}

/// Reads the MSRs at `indices` up to the first KVM refuses; returns how many it read.
pub fn read_some(fd: &VcpuFd, indices: &[u32]) -> Result<(usize, Vec<kvm_msr_entry>)> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = msr_list(&entries)?;
    let done = fd.get_msrs(&mut msrs).map_err(Error::kvm("KVM_GET_MSRS"))?;
    Ok((done.min(indices.len()), msrs.as_slice().to_vec()))
}

/// Writes every MSR that does not already hold its value, the deferred ones
/// last; each must be accepted. MSRs already right are left alone because
/// KVM refuses some writes of values it reads back (MSR_KVM_ASYNC_PF_INT
/// without an in-kernel local APIC, even of 0).
pub fn write_all(fd: &VcpuFd, values: &BTreeMap<u32, u64>) -> Result<()> {
    let indices: Vec<u32> = values.keys().copied().collect();
    let current = read_all(fd, &indices)?.values;
    let (later, first): (Vec<kvm_msr_entry>, Vec<kvm_msr_entry>) = values
        .iter()
        .filter(|&(index, value)| current.get(index) != Some(value))
        .map(|(&index, &data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .partition(|entry| DEFERRED.contains(&entry.index));
    for chunk in first
        .chunks(MSRS_PER_CALL)
        .chain(later.chunks(MSRS_PER_CALL))
    {
        let written = fd
            .set_msrs(&msr_list(chunk)?)
            .map_err(Error::kvm("KVM_SET_MSRS"))?;
        check_msr_count("write", written, chunk)?;
    }
    Ok(())
}
