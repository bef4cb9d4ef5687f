//! virtio-blk (virtio 1.2, 5.2) backed by a host file holding a raw image:
//! reads, writes, flushes (fdatasync) and, where the file's filesystem can
//! punch holes, discards, on the device thread.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{fallocate, FallocateFlags};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, Reader, Writer};

use super::{Context, Memory, QueueHandler, VirtioDevice};
use crate::error::{Error, Result};

/// A request's outcome, as its status byte says it.
type Outcome = std::result::Result<(), Failure>;

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Data segments a request may have: the queue less the header and status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
const HEADER_SIZE: usize = 16;
const DISCARD_SEGMENT_SIZE: usize = 16;
/// The most bytes moved between the file and guest memory at once.
const CHUNK: usize = 128 << 10;
/// The config space up to discard_sector_alignment (5.2.4).
const CONFIG_SIZE: usize = 48;

pub struct Blk {
    file: Arc<File>,
    path: PathBuf,
    read_only: bool,
    discard: bool,
    /// In sectors; re-read by `refresh_capacity`, shared with the handler.
    capacity: Arc<AtomicU64>,
}

impl Blk {
    /// Opens `path` (read-only or read-write) as the disk's image.
    pub fn open(path: &Path, read_only: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| open_error(path, read_only, &e))?;
        let discard = !read_only && can_punch_holes(&file);
        let blk = Blk {
            file: Arc::new(file),
            path: path.to_owned(),
            read_only,
            discard,
            capacity: Arc::new(AtomicU64::new(0)),
        };
        blk.refresh_capacity()?;
        Ok(blk)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn discard(&self) -> bool {
        self.discard
    }

    /// The disk's size in bytes: whole sectors of the file.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity.load(Ordering::SeqCst) * SECTOR_SIZE
    }

    /// Reads the file's size again; true if it changed.
    pub fn refresh_capacity(&self) -> Result<bool> {
        let length = self
            .file
            .metadata()
            .map_err(|e| Error::Device(format!("cannot stat {}: {e}", self.path.display())))?
            .len();
        let sectors = length / SECTOR_SIZE;
        Ok(self.capacity.swap(sectors, Ordering::SeqCst) != sectors)
    }

    fn config(&self) -> [u8; CONFIG_SIZE] {
        let mut config = [0u8; CONFIG_SIZE];
        let mut put = |offset: usize, bytes: &[u8]| {
            config[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, &self.capacity.load(Ordering::SeqCst).to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &(SECTOR_SIZE as u32).to_le_bytes());
        if self.discard {
            put(36, &(u32::MAX >> 9).to_le_bytes()); // max_discard_sectors
            put(40, &1u32.to_le_bytes()); // max_discard_seg
            put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        }
        config
    }
}

fn open_error(path: &Path, read_only: bool, error: &io::Error) -> Error {
    let how = if read_only { "read-only" } else { "read-write" };
    let fix = if read_only {
        "check the path and its permissions"
    } else {
        "check the path and its permissions, or attach it read-only"
    };
    Error::Argument(format!(
        "cannot open the disk image {} {how}: {error}; {fix}",
        path.display()
    ))
}

/// Whether the file's filesystem punches holes: a hole past the end of
/// the file changes nothing where it can, and fails where it cannot.
fn can_punch_holes(file: &File) -> bool {
    let Ok(metadata) = file.metadata() else {
        return false;
    };
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    metadata.is_file() && fallocate(file, flags, metadata.len(), SECTOR_SIZE).is_ok()
}

impl VirtioDevice for Blk {
    fn kind(&self) -> &'static str {
        "VirtioBlk"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut features = bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE);
        features |= bit(VIRTIO_BLK_F_FLUSH);
        if self.read_only {
            features |= bit(VIRTIO_BLK_F_RO);
        }
        if self.discard {
            features |= bit(VIRTIO_BLK_F_DISCARD);
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&self, _features: u64) -> Result<Box<dyn QueueHandler>> {
        Ok(Box::new(BlkHandler {
            file: self.file.clone(),
            read_only: self.read_only,
            capacity: self.capacity.clone(),
        }))
    }
}

fn bit(feature: u32) -> u64 {
    1 << feature
}

/// `data` from `config` at `offset`, zeros past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let start = (offset as usize).min(config.len());
    let end = (start + data.len()).min(config.len());
    data[..end - start].copy_from_slice(&config[start..end]);
}

struct BlkHandler {
    file: Arc<File>,
    read_only: bool,
    /// In sectors.
    capacity: Arc<AtomicU64>,
}

/// Why a request failed, as its status byte says it.
enum Failure {
    Io,
    Unsupported,
}

impl QueueHandler for BlkHandler {
    fn queue_notified(&mut self, index: usize, ctx: &mut Context<'_>) -> Result<()> {
        let memory = ctx.memory;
        ctx.serve(index, |chain| Some(self.request(memory, chain)))
    }
}

impl BlkHandler {
    /// Serves one request; returns the bytes written into the chain.
    fn request(&self, memory: &Memory, chain: &mut DescriptorChain<&Memory>) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) = (
            Reader::new(memory, chain.clone()),
            Writer::new(memory, chain.clone()),
        ) else {
            return 0;
        };
        let Some(status_at) = writer.available_bytes().checked_sub(1) else {
            return 0; // no room for a status byte: nothing to answer in
        };
        let Ok(mut status) = writer.split_at(status_at) else {
            return 0;
        };
        let result = self.execute(&mut reader, &mut writer);
        let code = match result {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(Failure::Io) => VIRTIO_BLK_S_IOERR,
            Err(Failure::Unsupported) => VIRTIO_BLK_S_UNSUPP,
        };
        let _ = status.write_all(&[code as u8]);
        (writer.bytes_written() + status.bytes_written()) as u32
    }

    fn execute(&self, reader: &mut Reader<'_>, data: &mut Writer<'_>) -> Outcome {
        let mut header = [0u8; HEADER_SIZE];
        reader.read_exact(&mut header).map_err(|_| Failure::Io)?;
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        match kind {
            VIRTIO_BLK_T_IN => self.read(sector, data),
            VIRTIO_BLK_T_OUT if !self.read_only => self.write(sector, reader),
            VIRTIO_BLK_T_FLUSH => self.file.sync_data().map_err(|_| Failure::Io),
            VIRTIO_BLK_T_DISCARD if !self.read_only => self.discard(reader),
            VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD => Err(Failure::Io),
            _ => Err(Failure::Unsupported),
        }
    }

    /// The byte offset of `sector`, if `length` bytes from there fit the disk.
    fn offset(&self, sector: u64, length: usize) -> std::result::Result<u64, Failure> {
        let start = sector.checked_mul(SECTOR_SIZE).ok_or(Failure::Io)?;
        let end = start.checked_add(length as u64).ok_or(Failure::Io)?;
        if end > self.capacity.load(Ordering::SeqCst) * SECTOR_SIZE {
            return Err(Failure::Io);
        }
        Ok(start)
    }

    fn read(&self, sector: u64, data: &mut Writer<'_>) -> Outcome {
        let mut offset = self.offset(sector, data.available_bytes())?;
        let mut buffer = vec![0u8; data.available_bytes().min(CHUNK)];
        while data.available_bytes() > 0 {
            let chunk = &mut buffer[..data.available_bytes().min(CHUNK)];
            self.file
                .read_exact_at(chunk, offset)
                .map_err(|_| Failure::Io)?;
            data.write_all(chunk).map_err(|_| Failure::Io)?;
            offset += chunk.len() as u64;
        }
        Ok(())
    }

    fn write(&self, sector: u64, data: &mut Reader<'_>) -> Outcome {
        let mut offset = self.offset(sector, data.available_bytes())?;
        let mut buffer = vec![0u8; data.available_bytes().min(CHUNK)];
        while data.available_bytes() > 0 {
            let chunk = &mut buffer[..data.available_bytes().min(CHUNK)];
            data.read_exact(chunk).map_err(|_| Failure::Io)?;
            self.file
                .write_all_at(chunk, offset)
                .map_err(|_| Failure::Io)?;
            offset += chunk.len() as u64;
        }
        Ok(())
    }

    /// Punches a hole for each segment (sector, sectors, flags).
    fn discard(&self, segments: &mut Reader<'_>) -> Outcome {
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        while segments.available_bytes() >= DISCARD_SEGMENT_SIZE {
            let mut segment = [0u8; DISCARD_SEGMENT_SIZE];
            segments.read_exact(&mut segment).map_err(|_| Failure::Io)?;
            let sector = u64::from_le_bytes(segment[0..8].try_into().expect("8 bytes"));
            let sectors = u32::from_le_bytes(segment[8..12].try_into().expect("4 bytes"));
            let length = u64::from(sectors) * SECTOR_SIZE;
            let offset = self.offset(sector, length as usize)?;
            fallocate(&*self.file, flags, offset, length).map_err(|_| Failure::Io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::read_config_bytes;

    #[test]
    fn config_reads_past_the_end_are_zeros() {
        let mut data = [0xffu8; 4];
        read_config_bytes(&[1, 2, 3], 1, &mut data);
        assert_eq!(data, [2, 3, 0, 0]);
        read_config_bytes(&[1, 2, 3], 9, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
