//! One vsock stream connection: its Unix stream on the host, the guest's
//! data the stream has not taken yet, and the credit each side has
//! (virtio 1.2, 5.10.6.3: a sender may have at most the receiver's
//! buf_alloc bytes in flight beyond what the receiver has forwarded).

use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileSlice, WriteVolatile};

use super::packet::BUFFER_SIZE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The host asked for it; the guest has not answered.
    Connecting,
    Established,
}

pub struct Connection {
    pub stream: UnixStream,
    pub token: u64,
    pub state: State,
    /// The stream is in the epoll set, and for which events.
    pub watched: Option<(bool, bool)>,
    /// Reading waits for the guest: for receive buffers (the connection is
    /// in the muxer's readable list) or for credit.
    pub read_held: bool,
    pub waiting_for_credit: bool,
    /// The guest will send nothing more: end the stream's writing side once
    /// `pending` is out.
    pub guest_done: bool,
    /// The guest closed: reset the connection once `pending` is out.
    pub closing: bool,
    /// The stream reached its end.
    pub host_done: bool,
    pending: Vec<u8>,
    forwarded: Wrapping<u32>,
    reported: Wrapping<u32>,
    sent: Wrapping<u32>,
    peer_buffer: u32,
    peer_forwarded: Wrapping<u32>,
}

impl Connection {
    pub fn new(stream: UnixStream, token: u64, state: State) -> Self {
        Connection {
            stream,
            token,
            state,
            watched: None,
            read_held: false,
            waiting_for_credit: false,
            guest_done: false,
            closing: false,
            host_done: false,
            pending: Vec::new(),
            forwarded: Wrapping(0),
            reported: Wrapping(0),
            sent: Wrapping(0),
            peer_buffer: 0,
            peer_forwarded: Wrapping(0),
        }
    }

    /// The events to watch the stream for: input while the guest can take
    /// it, output while guest data waits.
    pub fn interest(&self) -> (bool, bool) {
        let read = self.state == State::Established && !self.read_held && !self.host_done;
        (read, !self.pending.is_empty())
    }

    /// What the guest's header says of its receive buffer.
    pub fn update_peer(&mut self, buffer: u32, forwarded: u32) {
        self.peer_buffer = buffer;
        self.peer_forwarded = Wrapping(forwarded);
    }

    /// How many more bytes the guest can take.
    pub fn credit(&self) -> u32 {
        let in_flight = (self.sent - self.peer_forwarded).0;
        self.peer_buffer.saturating_sub(in_flight)
    }

    /// The forwarded count to put in a header; the guest knows it then.
    pub fn report(&mut self) -> u32 {
        self.reported = self.forwarded;
        self.forwarded.0
    }

    /// Whether the guest should be told it has room again before it asks.
    pub fn credit_update_due(&self) -> bool {
        (self.forwarded - self.reported).0 >= BUFFER_SIZE / 4
    }

    /// Reads from the stream into `data`, at most the guest's credit; 0 at
    /// the stream's end.
    pub fn receive<B: BitmapSlice>(&mut self, data: &VolatileSlice<'_, B>) -> io::Result<usize> {
        let room = data.len().min(self.credit() as usize);
        let mut window = data
            .subslice(0, room)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let read = self
            .stream
            .read_volatile(&mut window)
            .map_err(volatile_error)?;
        self.sent += read as u32;
        Ok(read)
    }

    /// Writes the guest's `data` to the stream, keeping what it does not
    /// take yet (within the credit the guest was given).
    pub fn send<B: BitmapSlice>(&mut self, data: &VolatileSlice<'_, B>) -> io::Result<()> {
        let mut written = 0;
        if self.pending.is_empty() {
            written = match self.stream.write_volatile(data) {
                Ok(n) => n,
                Err(e) if would_block_volatile(&e) => 0,
                Err(e) => return Err(volatile_error(e)),
            };
            self.forwarded += written as u32;
        }
        if written < data.len() {
            let rest = data
                .subslice(written, data.len() - written)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let start = self.pending.len();
            self.pending.resize(start + rest.len(), 0);
            rest.copy_to(&mut self.pending[start..]);
        }
        Ok(())
    }

    /// Writes what is pending; true once nothing is.
    pub fn flush(&mut self) -> io::Result<bool> {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                    self.forwarded += n as u32;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

fn would_block_volatile(error: &vm_memory::VolatileMemoryError) -> bool {
    matches!(error, vm_memory::VolatileMemoryError::IOError(e) if e.kind() == io::ErrorKind::WouldBlock)
}

fn volatile_error(error: vm_memory::VolatileMemoryError) -> io::Error {
    match error {
        vm_memory::VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (Connection::new(ours, 1, State::Established), theirs)
    }

    #[test]
    fn credit_is_the_peer_buffer_less_what_is_in_flight() {
        let (mut connection, _peer) = pair();
        assert_eq!(connection.credit(), 0);
        connection.update_peer(1000, 0);
        connection.sent = Wrapping(u32::MAX - 99); // counters wrap
        connection.update_peer(1000, u32::MAX - 399);
        assert_eq!(connection.credit(), 700);
    }

    #[test]
    fn data_the_stream_does_not_take_waits_and_is_flushed_in_order() {
        let (mut connection, mut peer) = pair();
        let mut data = vec![7u8; 4 << 20];
        // More than a socket buffer: the rest waits in `pending`.
        connection
            .send(&VolatileSlice::from(&mut data[..]))
            .unwrap();
        assert_eq!(connection.interest(), (true, true));
        let mut received = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while received.len() < data.len() {
            let n = peer.read(&mut chunk).unwrap();
            received.extend_from_slice(&chunk[..n]);
            connection.flush().unwrap();
        }
        assert!(connection.flush().unwrap());
        assert_eq!(received, data);
        assert_eq!(connection.report(), data.len() as u32);
        assert!(!connection.credit_update_due());
    }
}
