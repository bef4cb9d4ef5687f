//! The vsock packet header (virtio 1.2, 5.10.6) as pyfastvm sends it to the
//! guest, and the names of its operations.

use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;

pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flags: the sender will receive no more, send no more.
pub const SHUTDOWN_RECEIVE: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RECEIVE | SHUTDOWN_SEND;
/// What each connection can hold of the guest's data not yet written to its
/// stream: the credit the guest gets.
pub const BUFFER_SIZE: u32 = 256 << 10;

/// Which connection a packet belongs to: the host's port and the guest's.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Ports {
    pub host: u32,
    pub guest: u32,
}

/// A packet for the guest, but for its data.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing {
    pub ports: Ports,
    pub op: u16,
    pub flags: u32,
}

impl Outgoing {
    pub fn new(ports: Ports, op: u16) -> Self {
        Outgoing {
            ports,
            op,
            flags: 0,
        }
    }

    /// Fills in the header of a receive buffer, with `length` bytes of data
    /// and the connection's `forwarded` count (0 without a connection).
    pub fn write<B: BitmapSlice>(
        &self,
        packet: &mut VsockPacket<'_, B>,
        guest_cid: u64,
        length: u32,
        forwarded: u32,
    ) {
        packet
            .set_src_cid(HOST_CID)
            .set_dst_cid(guest_cid)
            .set_src_port(self.ports.host)
            .set_dst_port(self.ports.guest)
            .set_type(TYPE_STREAM)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_len(length)
            .set_buf_alloc(BUFFER_SIZE)
            .set_fwd_cnt(forwarded);
    }
}
