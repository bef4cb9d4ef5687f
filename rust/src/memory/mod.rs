//! Guest RAM: mappings laid out around the 32-bit MMIO hole, anonymous, on a
//! memfd (so clones can map it), or a file mapped copy-on-write (a snapshot's
//! memory); Python access to them in access.rs, sparse copies in dump.rs.

mod access;
mod dump;

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};

use pyo3::prelude::*;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

pub use access::PyGuestMemory;

use crate::error::{Error, Result};

/// Start of the 32-bit MMIO hole: RAM beyond this much continues at 4 GiB,
/// leaving room below 4 GiB for the LAPIC, IOAPIC and PCI windows.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
pub const MMIO_HOLE_END: u64 = 1 << 32;

/// The smallest guest we create: one page.
const MIN_MEMORY: u64 = 4096;

/// Guest-physical RAM ranges for `size` bytes of RAM.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_HOLE_START {
        return vec![(GuestAddress(0), size as usize)];
    }
    vec![
        (GuestAddress(0), MMIO_HOLE_START as usize),
        (
            GuestAddress(MMIO_HOLE_END),
            (size - MMIO_HOLE_START) as usize,
        ),
    ]
}

/// `pyfastvm._core.ram_layout(size)`: the (guest-physical address, length)
/// of each RAM range a VM of `size` bytes gets: the one map of guest RAM,
/// which the e820 table and the config checks read too.
#[pyfunction]
pub fn ram_layout(size: u64) -> Vec<(u64, u64)> {
    ram_ranges(size)
        .into_iter()
        .map(|(start, length)| (start.0, length as u64))
        .collect()
}

/// Where guest RAM lives.
pub enum Backing {
    /// Private anonymous memory.
    Anonymous,
    /// A memfd mapped shared: the RAM can later be mapped by clones.
    Memfd,
    /// A file mapped privately: copy-on-write, paged in on demand, so a VM
    /// starts from a snapshot's memory (or a template's memfd) at the same
    /// cost whatever its size, and never writes to the file.
    CopyOnWrite(File),
}

/// Guest RAM and, for a file-backed one, its file.
pub struct Ram {
    pub memory: GuestMemoryMmap,
    pub file: Option<File>,
}

/// Maps `size` bytes of guest RAM, backed as asked. In a file, the RAM
/// ranges follow each other from offset 0 (the hole takes no room).
pub fn allocate(size: u64, backing: Backing) -> Result<Ram> {
    if size < MIN_MEMORY || size % 4096 != 0 {
        return Err(Error::GuestMemory(format!(
            "memory_size {size:#x} is not a positive multiple of 4 KiB: pass e.g. 64 * 1024 * 1024"
        )));
    }
    let cannot_map = |e: &dyn std::fmt::Display| {
        Error::GuestMemory(format!("cannot map {} MiB of guest RAM: {e}", size >> 20))
    };
    let (file, flags) = match backing {
        Backing::Anonymous => {
            let memory =
                GuestMemoryMmap::from_ranges(&ram_ranges(size)).map_err(|e| cannot_map(&e))?;
            return Ok(Ram { memory, file: None });
        }
        Backing::Memfd => (new_memfd(size)?, libc::MAP_SHARED),
        Backing::CopyOnWrite(file) => (check_holds(file, size)?, libc::MAP_PRIVATE),
    };
    let mut regions = Vec::new();
    let mut offset = 0;
    for (start, length) in ram_ranges(size) {
        let file_offset = FileOffset::new(file.try_clone().map_err(|e| cannot_map(&e))?, offset);
        let mapping = MmapRegionBuilder::new(length)
            .with_file_offset(file_offset)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| cannot_map(&e))?;
        regions
            .push(GuestRegionMmap::new(mapping, start).ok_or_else(|| cannot_map(&"bad region"))?);
        offset += length as u64;
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(|e| cannot_map(&e))?;
    Ok(Ram {
        memory,
        file: Some(file),
    })
}

/// An anonymous in-memory file of `size` bytes (memfd_create(2)).
fn new_memfd(size: u64) -> Result<File> {
    let os_error = |what: &str| {
        Error::GuestMemory(format!(
            "cannot {what} a memfd for guest RAM: {}",
            std::io::Error::last_os_error()
        ))
    };
    // SAFETY: the name is a NUL-terminated string literal; the flags are valid.
    let fd = unsafe { libc::memfd_create(c"pyfastvm-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(os_error("create"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|_| os_error("size"))?;
    Ok(file)
}

/// `pyfastvm._core.dump_ram_file(source_fd, memory_size, target_fd)`: copies
/// the RAM image in `source_fd` (a snapshot's memory file, a template's
/// memfd) to `target_fd` as `GuestMemory.dump` writes it, sparse; returns
/// the bytes of data written.
#[pyfunction]
pub fn dump_ram_file(
    py: Python<'_>,
    source_fd: RawFd,
    memory_size: u64,
    target_fd: RawFd,
) -> Result<u64> {
    let ram = allocate(memory_size, Backing::CopyOnWrite(dup_file(source_fd)?))?;
    let target = dup_file(target_fd)?;
    py.detach(|| dump::dump(&ram.memory, &target))
}

/// Our own `File` for the caller's open descriptor `fd`.
pub fn dup_file(fd: RawFd) -> Result<File> {
    // SAFETY: dup has no memory-safety preconditions; a bad fd fails.
    let own = unsafe { libc::dup(fd) };
    if own < 0 {
        return Err(Error::Argument(format!("fd {fd} is not an open file")));
    }
    // SAFETY: `own` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(own) })
}

/// `file`, if it holds at least `size` bytes of RAM.
fn check_holds(file: File, size: u64) -> Result<File> {
    let held = file
        .metadata()
        .map_err(|e| Error::GuestMemory(format!("cannot read the memory file: {e}")))?
        .len();
    if held < size {
        return Err(Error::GuestMemory(format!(
            "the memory file holds {} MiB, less than the VM's {} MiB: restore with the \
             memory size the snapshot was taken with",
            held >> 20,
            size >> 20
        )));
    }
    Ok(file)
}
