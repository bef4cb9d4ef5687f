//! Guest-virtual to guest-physical translation by walking the guest's own page
//! tables (Intel SDM vol. 3A, 4.5 "4-Level Paging and 5-Level Paging"). The
//! exit assists use it on every hooked exit, where KVM_TRANSLATE would cost
//! an ioctl per address.

use kvm_bindings::kvm_sregs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PRESENT: u64 = 1;
/// PS: the entry maps a 1 GiB (PDPTE) or 2 MiB (PDE) page itself.
const LARGE_PAGE: u64 = 1 << 7;
/// Bits 51:12 of an entry: the next table or the 4 KiB page.
const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;
const CR0_PG: u64 = 1 << 31;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PAGE_SIZE: u64 = 4096;
const INDEX_BITS: u32 = 9;

/// The guest's IA-32e paging structures, as its CR3 and CR4 give them.
#[derive(Clone, Copy, Debug)]
pub struct Paging {
    root: u64,
    levels: u32,
}

impl Paging {
    /// The paging of a vCPU in IA-32e mode; None in any other mode (the
    /// assists only serve 64-bit guests).
    pub fn of(sregs: &kvm_sregs) -> Option<Paging> {
        let long_mode = sregs.cr0 & CR0_PG != 0 && sregs.efer & EFER_LMA != 0;
        long_mode.then_some(Paging {
            root: sregs.cr3 & ADDRESS_MASK,
            levels: if sregs.cr4 & CR4_LA57 != 0 { 5 } else { 4 },
        })
    }

    /// The guest-physical address of `gva`, or None where it is not mapped.
    pub fn translate(&self, memory: &GuestMemoryMmap, gva: u64) -> Option<u64> {
        let mut table = self.root;
        for level in (1..=self.levels).rev() {
            let shift = 12 + INDEX_BITS * (level - 1);
            let index = (gva >> shift) & ((1 << INDEX_BITS) - 1);
            let entry: u64 = memory.read_obj(GuestAddress(table + index * 8)).ok()?;
            if entry & PRESENT == 0 {
                return None;
            }
            let maps_page = level == 1 || (level <= 3 && entry & LARGE_PAGE != 0);
            if maps_page {
                let offset_mask = (1u64 << shift) - 1;
                return Some((entry & ADDRESS_MASK & !offset_mask) | (gva & offset_mask));
            }
            table = entry & ADDRESS_MASK;
        }
        None
    }

    /// Copies guest-virtual `[gva, gva + buf.len())` into `buf`, page by page;
    /// None if any of it is not mapped or not RAM.
    pub fn read(&self, memory: &GuestMemoryMmap, gva: u64, buf: &mut [u8]) -> Option<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = gva.wrapping_add(done as u64);
            let in_page = (PAGE_SIZE - at % PAGE_SIZE).min((buf.len() - done) as u64) as usize;
            let gpa = self.translate(memory, at)?;
            memory
                .read_slice(&mut buf[done..done + in_page], GuestAddress(gpa))
                .ok()?;
            done += in_page;
        }
        Some(())
    }

    /// Reads the little-endian u64s at guest-virtual `gva`.
    pub fn read_u64s<const N: usize>(
        &self,
        memory: &GuestMemoryMmap,
        gva: u64,
    ) -> Option<[u64; N]> {
        let mut bytes = vec![0u8; N * 8];
        self.read(memory, gva, &mut bytes)?;
        let mut words = [0u64; N];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        Some(words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::allocate;

    const PML4: u64 = 0x1000;
    const PDPT: u64 = 0x2000;
    const PD: u64 = 0x3000;
    const PT: u64 = 0x4000;
    const FLAGS: u64 = PRESENT | 2;

    fn write(memory: &GuestMemoryMmap, gpa: u64, value: u64) {
        memory.write_obj(value, GuestAddress(gpa)).unwrap();
    }

    /// Maps 0xffff_8000_0040_1000 with a 4 KiB page, 0xffff_8000_0060_0000
    /// with a 2 MiB page and 0xffff_8000_4000_0000 with a 1 GiB page.
    fn tables() -> (GuestMemoryMmap, Paging) {
        let memory = allocate(16 << 20, crate::memory::Backing::Anonymous)
            .unwrap()
            .memory;
        write(&memory, PML4 + 256 * 8, PDPT | FLAGS);
        write(&memory, PDPT, PD | FLAGS);
        write(&memory, PDPT + 8, FLAGS | LARGE_PAGE); // GiB 1 -> 0 (only the low MiBs exist)
        write(&memory, PD + 2 * 8, PT | FLAGS);
        write(&memory, PD + 3 * 8, 0x20_0000 | FLAGS | LARGE_PAGE);
        write(&memory, PT + 8, 0x9000 | FLAGS);
        (
            memory,
            Paging {
                root: PML4,
                levels: 4,
            },
        )
    }

    #[test]
    fn walks_4k_2m_and_1g_pages() {
        let (memory, paging) = tables();
        assert_eq!(
            paging.translate(&memory, 0xffff_8000_0040_1234),
            Some(0x9234)
        );
        assert_eq!(
            paging.translate(&memory, 0xffff_8000_0060_5678),
            Some(0x20_5678)
        );
        assert_eq!(
            paging.translate(&memory, 0xffff_8000_4012_3456),
            Some(0x12_3456)
        );
    }

    #[test]
    fn unmapped_addresses_have_no_translation() {
        let (memory, paging) = tables();
        assert_eq!(paging.translate(&memory, 0x1000), None);
        assert_eq!(paging.translate(&memory, 0xffff_8000_0040_2000), None);
    }

    #[test]
    fn reads_across_a_page_boundary() {
        let (memory, paging) = tables();
        write(&memory, PT + 2 * 8, 0x5000 | FLAGS);
        memory
            .write_slice(&[1, 2, 3, 4], GuestAddress(0x9ffe))
            .unwrap();
        memory.write_slice(&[5, 6], GuestAddress(0x5000)).unwrap();
        let mut buf = [0u8; 4];
        paging
            .read(&memory, 0xffff_8000_0040_1ffe, &mut buf)
            .unwrap();
        assert_eq!(buf, [1, 2, 5, 6]);
    }

    #[test]
    fn only_long_mode_has_ia32e_paging() {
        let mut sregs = kvm_sregs {
            cr0: CR0_PG | 1,
            cr3: PML4 | 0x18,
            efer: EFER_LMA,
            ..Default::default()
        };
        let paging = Paging::of(&sregs).unwrap();
        assert_eq!((paging.root, paging.levels), (PML4, 4));
        sregs.efer = 0;
        assert!(Paging::of(&sregs).is_none());
    }
}
