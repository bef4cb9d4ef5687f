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

/// Reads every MSR in `indices` that KVM will read.
pub fn read_all(fd: &VcpuFd, indices: &[u32]) -> Result<ReadMsrs> {
    read_past_refusals(indices, |chunk| read_some(fd, chunk))
}

/// KVM_GET_MSRS stops at the first index it refuses (some listed MSRs
/// depend on features the host or the vCPU's CPUID lacks), so a refusal is
/// recorded and the read goes on after it: one call per refusal, not one
/// per MSR.
fn read_past_refusals(
    indices: &[u32],
    mut read_some: impl FnMut(&[u32]) -> Result<(usize, Vec<kvm_msr_entry>)>,
) -> Result<ReadMsrs> {
    let mut read = ReadMsrs {
        values: BTreeMap::new(),
        refused: Vec::new(),
    };
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSRS_PER_CALL)];
        let (done, entries) = read_some(chunk)?;
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

/// Writes every MSR that does not already hold its value; each must be
/// accepted.
pub fn write_all(fd: &VcpuFd, values: &BTreeMap<u32, u64>) -> Result<()> {
    let indices: Vec<u32> = values.keys().copied().collect();
    let current = read_all(fd, &indices)?.values;
    let writes = ordered_writes(values, &current);
    for chunk in writes.chunks(MSRS_PER_CALL) {
        let written = fd
            .set_msrs(&msr_list(chunk)?)
            .map_err(Error::kvm("KVM_SET_MSRS"))?;
        check_msr_count("write", written, chunk)?;
    }
    Ok(())
}

/// The MSRs whose `current` value is not the saved one, the deferred ones
/// last (KVM writes a call's entries in order). MSRs already right are
/// left alone because KVM refuses some writes of values it reads back
/// (MSR_KVM_ASYNC_PF_INT without an in-kernel local APIC, even of 0).
fn ordered_writes(values: &BTreeMap<u32, u64>, current: &BTreeMap<u32, u64>) -> Vec<kvm_msr_entry> {
    let mut writes: Vec<kvm_msr_entry> = values
        .iter()
        .filter(|&(index, value)| current.get(index) != Some(value))
        .map(|(&index, &data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    writes.sort_by_key(|entry| DEFERRED.contains(&entry.index));
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A KVM_GET_MSRS that refuses `refused` and reads index * 2 elsewhere.
    fn fake_kvm<'a>(
        refused: &'a [u32],
        calls: &'a mut usize,
    ) -> impl FnMut(&[u32]) -> Result<(usize, Vec<kvm_msr_entry>)> + 'a {
        move |chunk| {
            *calls += 1;
            let done = chunk
                .iter()
                .position(|i| refused.contains(i))
                .unwrap_or(chunk.len());
            let entries = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    data: u64::from(index) * 2,
                    ..Default::default()
                })
                .collect();
            Ok((done, entries))
        }
    }

    #[test]
    fn a_refused_msr_is_recorded_and_the_read_goes_on_past_it() {
        let indices: Vec<u32> = (0..600).collect();
        let refused = [3, 254, 255, 400, 599];
        let mut calls = 0;
        let read = read_past_refusals(&indices, fake_kvm(&refused, &mut calls)).unwrap();
        assert_eq!(read.refused, refused);
        assert_eq!(read.values.len(), 600 - refused.len());
        assert!(read.values.iter().all(|(&i, &v)| v == u64::from(i) * 2));
        // Each call reads on from where the last stopped, up to 255 MSRs:
        // 0-3, 4-254, 255, 256-400, 401-599.
        assert_eq!(calls, 5);
    }

    #[test]
    fn only_changed_msrs_are_written_and_the_tsc_deadline_last() {
        let values = BTreeMap::from([(0x10, 5), (0x6e0, 9), (0x174, 1), (0xc000_0082, 7)]);
        let current = BTreeMap::from([(0x10, 4), (0x6e0, 0), (0x174, 1)]);
        let order: Vec<u32> = ordered_writes(&values, &current)
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(order, [0x10, 0xc000_0082, 0x6e0]);
    }
}
