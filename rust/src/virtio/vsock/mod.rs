//! virtio-vsock (virtio 1.2, 5.10) with the host side on Unix domain
//! sockets, as Firecracker does it:
//! - a host program connects to the device's socket `path` and writes
//!   `CONNECT <port>\n`; the guest's listener on `port` gets the connection
//!   and the host program reads `OK <host port>\n`, then the byte stream;
//! - a guest connection to CID 2 (the host), port P, reaches the Unix
//!   listener at `<path>_P`.
//!
//! `muxer.rs` routes packets between the queues and the streams;
//! `connection.rs` is one stream with its credit (flow control);
//! `packet.rs` writes headers into the guest's receive buffers.

mod connection;
mod muxer;
mod packet;

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

use super::blk::read_config_bytes;
use super::{QueueHandler, VirtioDevice};
use crate::error::{Error, Result};

/// Context ids below 3 are the hypervisor's, the local and the host's.
const FIRST_GUEST_CID: u64 = 3;
const QUEUE_SIZES: [u16; 3] = [256, 256, 64];

pub struct Vsock {
    cid: u64,
    path: PathBuf,
    listener: UnixListener,
}

impl Vsock {
    /// A device for guest context id `cid`, listening at `path` (which must
    /// not exist yet; it is removed with the device).
    pub fn new(cid: u64, path: &Path) -> Result<Self> {
        if !(FIRST_GUEST_CID..u64::from(u32::MAX)).contains(&cid) {
            return Err(Error::Argument(format!(
                "vsock cid {cid}: a guest's context id is 3 or more (0-2 are reserved) and \
                 below 2**32 - 1"
            )));
        }
        let listener = UnixListener::bind(path).map_err(|e| bind_error(path, &e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Device(format!("vsock socket {}: {e}", path.display())))?;
        Ok(Vsock {
            cid,
            path: path.to_owned(),
            listener,
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn bind_error(path: &Path, error: &io::Error) -> Error {
    let fix = match error.kind() {
        io::ErrorKind::AddrInUse => "remove it or pick another path",
        _ => "pick a path in a writable directory, under 108 bytes",
    };
    Error::Argument(format!(
        "cannot create the vsock socket {}: {error}; {fix}",
        path.display()
    ))
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl VirtioDevice for Vsock {
    fn kind(&self) -> &'static str {
        "VirtioVsock"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    /// Stream sockets only, which need no feature bit.
    fn features(&self) -> u64 {
        0
    }

    /// guest_cid, a 64-bit little-endian word.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&self, _features: u64) -> Result<Box<dyn QueueHandler>> {
        let listener = self
            .listener
            .try_clone()
            .map_err(|e| Error::Device(format!("vsock socket {}: {e}", self.path.display())))?;
        Ok(Box::new(muxer::Muxer::new(self.cid, &self.path, listener)))
    }
}
