//! Guest RAM to a file, sparse: pages that hold only zeros (most of a
//! guest's RAM, which it never wrote) stay holes, so a snapshot's memory
//! file takes the room of what the guest used.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::error::{Error, Result};

const PAGE: usize = 4096;
/// Copied out of guest RAM at a time.
const CHUNK: usize = 1 << 20;

/// Writes every RAM range to `file`, one after the other from offset 0 (as
/// `memory::allocate` maps them back); returns the bytes of data written.
pub fn dump(memory: &GuestMemoryMmap, file: &File) -> Result<u64> {
    let failed = |e: &dyn std::fmt::Display| {
        Error::GuestMemory(format!("cannot write guest RAM to the memory file: {e}"))
    };
    let mut buffer = vec![0u8; CHUNK];
    let (mut offset, mut written) = (0u64, 0u64);
    for region in memory.iter() {
        let mut done = 0u64;
        while done < region.len() {
            let chunk = &mut buffer[..CHUNK.min((region.len() - done) as usize)];
            memory
                .read_slice(chunk, region.start_addr().unchecked_add(done))
                .map_err(|e| failed(&e))?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let at = offset + done + (i * PAGE) as u64;
                    file.write_all_at(page, at).map_err(|e| failed(&e))?;
                    written += page.len() as u64;
                }
            }
            done += chunk.len() as u64;
        }
        offset += region.len();
    }
    file.set_len(offset).map_err(|e| failed(&e))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use vm_memory::GuestAddress;

    use super::*;
    use crate::memory::{allocate, Backing};

    #[test]
    fn only_written_pages_take_room_and_they_read_back() {
        let ram = allocate(16 << 20, Backing::Anonymous).unwrap().memory;
        ram.write_slice(b"hello", GuestAddress(0x5000)).unwrap();
        ram.write_slice(b"world", GuestAddress(0xf0_0000)).unwrap();
        let file = tempfile();
        assert_eq!(dump(&ram, &file).unwrap(), 2 * PAGE as u64);
        let metadata = file.metadata().unwrap();
        assert_eq!(metadata.len(), 16 << 20);
        assert!(
            metadata.blocks() * 512 < 1 << 20,
            "the zero pages are holes"
        );
        let copy = allocate(16 << 20, Backing::CopyOnWrite(file))
            .unwrap()
            .memory;
        let mut word = [0u8; 5];
        copy.read_slice(&mut word, GuestAddress(0xf0_0000)).unwrap();
        assert_eq!(&word, b"world");
    }

    fn tempfile() -> File {
        let path = std::env::temp_dir().join(format!("pyfastvm-dump-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(path).unwrap();
        file
    }
}
