//! The vsock device's queue work: packets from the guest (transmit queue)
//! to the host's Unix streams, data and control packets from the host into
//! the guest's receive buffers, and the host's new connections.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::bitmap::BitmapSlice;
use vmm_sys_util::epoll::EventSet;

use super::connection::{Connection, State};
use super::packet::*;
use crate::error::Result;
use crate::virtio::event_loop::HANDLER_TOKENS;
use crate::virtio::{Context, QueueHandler};

const RX: usize = 0;
const TX: usize = 1;
const LISTENER: u64 = HANDLER_TOKENS;
/// The largest packet payload Linux sends (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
const MAX_PACKET_DATA: u32 = 64 << 10;
/// Host ports of host-initiated connections count up from here, as
/// Firecracker's do, clear of the ports guests connect to.
const FIRST_HOST_PORT: u32 = 1 << 30;
/// `CONNECT 4294967295\n` and then some.
const HANDSHAKE_LIMIT: usize = 32;

/// A host stream that has not said which guest port it wants.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct Muxer {
    cid: u64,
    path: PathBuf,
    listener: UnixListener,
    connections: HashMap<Ports, Connection>,
    by_token: HashMap<u64, Ports>,
    handshakes: HashMap<u64, Handshake>,
    /// Control packets waiting for receive buffers.
    control: VecDeque<Outgoing>,
    /// Connections whose streams have data for the guest.
    readable: VecDeque<Ports>,
    next_token: u64,
    next_host_port: u32,
}

impl Muxer {
    pub fn new(cid: u64, path: &Path, listener: UnixListener) -> Self {
        Muxer {
            cid,
            path: path.to_owned(),
            listener,
            connections: HashMap::new(),
            by_token: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            readable: VecDeque::new(),
            next_token: LISTENER + 1,
            next_host_port: FIRST_HOST_PORT,
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Every packet the guest sent.
    fn transmit(&mut self, ctx: &Context<'_>) -> Result<()> {
        let memory = ctx.memory;
        ctx.serve(TX, |chain| {
            if let Ok(packet) = VsockPacket::from_tx_virtq_chain(memory, chain, MAX_PACKET_DATA) {
                self.handle_packet(&packet, ctx);
            }
            Some(0)
        })
    }

    fn handle_packet<B: BitmapSlice>(&mut self, packet: &VsockPacket<'_, B>, ctx: &Context<'_>) {
        let ports = Ports {
            host: packet.dst_port(),
            guest: packet.src_port(),
        };
        let op = packet.op();
        let ours = packet.dst_cid() == HOST_CID && packet.src_cid() == self.cid;
        if !ours || packet.type_() != TYPE_STREAM {
            return self.refuse(ports, op);
        }
        if op == OP_REQUEST {
            return self.connect_to_host(ports, ctx);
        }
        let Some(connection) = self.connections.get_mut(&ports) else {
            return self.refuse(ports, op);
        };
        connection.update_peer(packet.buf_alloc(), packet.fwd_cnt());
        let connecting = connection.state == State::Connecting;
        // Any packet's header may give back credit a held stream waits for.
        self.credit_arrived(ports);
        match op {
            OP_RESPONSE if connecting => self.accepted(ports, ctx),
            OP_RW => self.forward(ports, packet, ctx),
            OP_CREDIT_REQUEST => self
                .control
                .push_back(Outgoing::new(ports, OP_CREDIT_UPDATE)),
            OP_SHUTDOWN => self.guest_shutdown(ports, packet.flags(), ctx),
            OP_RST => self.remove(ports, ctx),
            _ => {}
        }
    }

    /// Answers a packet for no connection of ours with a reset.
    fn refuse(&mut self, ports: Ports, op: u16) {
        if op != OP_RST {
            self.control.push_back(Outgoing::new(ports, OP_RST));
        }
    }

    /// The guest connects to host port P: the listener at `<path>_P`.
    fn connect_to_host(&mut self, ports: Ports, ctx: &Context<'_>) {
        if self.connections.contains_key(&ports) {
            return self.refuse(ports, OP_REQUEST);
        }
        let listener = format!("{}_{}", self.path.display(), ports.host);
        let Ok(stream) = UnixStream::connect(listener) else {
            return self.refuse(ports, OP_REQUEST);
        };
        if stream.set_nonblocking(true).is_err() {
            return self.refuse(ports, OP_REQUEST);
        }
        let token = self.token();
        self.add(
            ports,
            Connection::new(stream, token, State::Established),
            ctx,
        );
        self.control.push_back(Outgoing::new(ports, OP_RESPONSE));
    }

    fn add(&mut self, ports: Ports, connection: Connection, ctx: &Context<'_>) {
        self.by_token.insert(connection.token, ports);
        self.connections.insert(ports, connection);
        self.rewatch(ports, ctx);
    }

    /// The guest took a host program's connection: tell the program.
    fn accepted(&mut self, ports: Ports, ctx: &Context<'_>) {
        let Some(connection) = self.connections.get_mut(&ports) else {
            return;
        };
        connection.state = State::Established;
        let answer = format!("OK {}\n", ports.host);
        // A fresh stream's buffer takes a line.
        if connection.stream.write_all(answer.as_bytes()).is_err() {
            return self.reset(ports, ctx);
        }
        self.rewatch(ports, ctx);
    }

    fn forward<B: BitmapSlice>(
        &mut self,
        ports: Ports,
        packet: &VsockPacket<'_, B>,
        ctx: &Context<'_>,
    ) {
        let Some(connection) = self.connections.get_mut(&ports) else {
            return;
        };
        if let Some(data) = packet.data_slice() {
            if connection.send(data).is_err() {
                return self.reset(ports, ctx);
            }
        }
        if connection.credit_update_due() {
            self.control
                .push_back(Outgoing::new(ports, OP_CREDIT_UPDATE));
        }
        self.rewatch(ports, ctx);
    }

    fn credit_arrived(&mut self, ports: Ports) {
        if let Some(connection) = self.connections.get_mut(&ports) {
            if connection.waiting_for_credit && connection.credit() > 0 {
                connection.waiting_for_credit = false;
                self.readable.push_back(ports);
            }
        }
    }

    fn guest_shutdown(&mut self, ports: Ports, flags: u32, ctx: &Context<'_>) {
        if let Some(connection) = self.connections.get_mut(&ports) {
            connection.guest_done |= flags & SHUTDOWN_SEND != 0;
            connection.closing |= flags & SHUTDOWN_BOTH == SHUTDOWN_BOTH;
        }
        self.flushed(ports, ctx);
    }

    /// Writes pending guest data; once it is out, ends the stream's writing
    /// side if the guest is done, or the connection if the guest closed.
    fn flushed(&mut self, ports: Ports, ctx: &Context<'_>) {
        let Some(connection) = self.connections.get_mut(&ports) else {
            return;
        };
        match connection.flush() {
            Err(_) => return self.reset(ports, ctx),
            Ok(false) => return self.rewatch(ports, ctx),
            Ok(true) => {}
        }
        if connection.closing {
            return self.reset(ports, ctx);
        }
        if connection.guest_done {
            let _ = connection.stream.shutdown(std::net::Shutdown::Write);
        }
        self.rewatch(ports, ctx);
    }

    /// Ends a connection and tells the guest.
    fn reset(&mut self, ports: Ports, ctx: &Context<'_>) {
        self.remove(ports, ctx);
        self.control.push_back(Outgoing::new(ports, OP_RST));
    }

    fn remove(&mut self, ports: Ports, ctx: &Context<'_>) {
        if let Some(connection) = self.connections.remove(&ports) {
            self.by_token.remove(&connection.token);
            if connection.watched.is_some() {
                let _ = ctx.unwatch(connection.stream.as_raw_fd());
            }
        }
    }

    /// Watches the stream for what the connection now needs; out of the set
    /// when it needs nothing (a hung-up stream would wake the loop forever).
    fn rewatch(&mut self, ports: Ports, ctx: &Context<'_>) {
        let Some(connection) = self.connections.get_mut(&ports) else {
            return;
        };
        let wanted = connection.interest();
        let events = events_for(wanted);
        let fd = connection.stream.as_raw_fd();
        let result = match (connection.watched, events.is_empty()) {
            (Some(old), _) if old == wanted => Ok(()),
            (Some(_), true) => ctx.unwatch(fd),
            (Some(_), false) => ctx.rewatch(fd, connection.token, events),
            (None, true) => Ok(()),
            (None, false) => ctx.watch(fd, connection.token, events),
        };
        connection.watched = (!events.is_empty()).then_some(wanted);
        if result.is_err() {
            self.reset(ports, ctx);
        }
    }

    /// Accepts every waiting host connection; each says its port first.
    fn accept_all(&mut self, ctx: &Context<'_>) -> Result<()> {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.token();
            ctx.watch(stream.as_raw_fd(), token, EventSet::IN)?;
            let line = Vec::new();
            self.handshakes.insert(token, Handshake { stream, line });
        }
        Ok(())
    }

    /// Reads a host program's `CONNECT <port>\n`, a byte at a time so that
    /// nothing after it is taken from the stream.
    fn handshake(&mut self, token: u64, ctx: &Context<'_>) -> Result<()> {
        let Some(handshake) = self.handshakes.get_mut(&token) else {
            return Ok(());
        };
        let mut byte = [0u8];
        loop {
            match handshake.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) if handshake.line.len() < HANDSHAKE_LIMIT => handshake.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                _ => return self.drop_handshake(token, ctx),
            }
        }
        let handshake = self.handshakes.remove(&token).expect("present");
        ctx.unwatch(handshake.stream.as_raw_fd())?;
        let Some(port) = parse_connect(&handshake.line) else {
            return Ok(()); // dropping the stream closes it
        };
        let ports = Ports {
            host: self.next_host_port,
            guest: port,
        };
        self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
        self.add(
            ports,
            Connection::new(handshake.stream, token, State::Connecting),
            ctx,
        );
        self.control.push_back(Outgoing::new(ports, OP_REQUEST));
        Ok(())
    }

    fn drop_handshake(&mut self, token: u64, ctx: &Context<'_>) -> Result<()> {
        if let Some(handshake) = self.handshakes.remove(&token) {
            ctx.unwatch(handshake.stream.as_raw_fd())?;
        }
        Ok(())
    }

    /// A connection's stream is ready.
    fn stream_ready(&mut self, token: u64, events: EventSet, ctx: &Context<'_>) {
        let Some(&ports) = self.by_token.get(&token) else {
            return;
        };
        let Some(connection) = self.connections.get_mut(&ports) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
            && !connection.read_held
        {
            connection.read_held = true;
            self.readable.push_back(ports);
        }
        if events.contains(EventSet::OUT) {
            self.flushed(ports, ctx);
        }
        self.rewatch(ports, ctx);
    }

    /// Fills the guest's receive buffers: control packets first, then data.
    fn receive(&mut self, ctx: &Context<'_>) -> Result<()> {
        let memory = ctx.memory;
        ctx.serve(RX, |chain| {
            let Ok(mut packet) = VsockPacket::from_rx_virtq_chain(memory, chain, MAX_PACKET_DATA)
            else {
                return Some(0);
            };
            self.next_packet(&mut packet, ctx)
        })
    }

    /// Writes the next packet for the guest into `packet`; its length, or
    /// None when there is nothing to send.
    fn next_packet<B: BitmapSlice>(
        &mut self,
        packet: &mut VsockPacket<'_, B>,
        ctx: &Context<'_>,
    ) -> Option<u32> {
        if let Some(outgoing) = self.control.pop_front() {
            let forwarded = self
                .connections
                .get_mut(&outgoing.ports)
                .map_or(0, Connection::report);
            outgoing.write(packet, self.cid, 0, forwarded);
            return Some(PKT_HEADER_SIZE as u32);
        }
        while let Some(ports) = self.readable.pop_front() {
            if let Some(length) = self.read_stream(ports, packet, ctx) {
                return Some(length);
            }
        }
        None
    }

    /// Data from one connection's stream into `packet`, if it has any and
    /// the guest has room for it; at the stream's end, a SHUTDOWN.
    fn read_stream<B: BitmapSlice>(
        &mut self,
        ports: Ports,
        packet: &mut VsockPacket<'_, B>,
        ctx: &Context<'_>,
    ) -> Option<u32> {
        let connection = self.connections.get_mut(&ports)?;
        if connection.credit() == 0 {
            connection.waiting_for_credit = true;
            return None;
        }
        let data = packet.data_slice()?;
        match connection.receive(data) {
            Ok(0) => {
                connection.host_done = true;
                let mut shutdown = Outgoing::new(ports, OP_SHUTDOWN);
                shutdown.flags = SHUTDOWN_SEND;
                shutdown.write(packet, self.cid, 0, connection.report());
                self.rewatch(ports, ctx);
                Some(PKT_HEADER_SIZE as u32)
            }
            Ok(length) => {
                let forwarded = connection.report();
                Outgoing::new(ports, OP_RW).write(packet, self.cid, length as u32, forwarded);
                self.readable.push_back(ports);
                Some((PKT_HEADER_SIZE + length) as u32)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                connection.read_held = false;
                self.rewatch(ports, ctx);
                None
            }
            Err(_) => {
                self.reset(ports, ctx);
                None
            }
        }
    }
}

fn events_for((read, write): (bool, bool)) -> EventSet {
    let mut events = EventSet::empty();
    if read {
        events |= EventSet::IN;
    }
    if write {
        events |= EventSet::OUT;
    }
    events
}

/// The port of a `CONNECT <port>` line.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    line.trim_end_matches('\r')
        .strip_prefix("CONNECT ")?
        .trim()
        .parse()
        .ok()
}

impl QueueHandler for Muxer {
    fn start(&mut self, ctx: &mut Context<'_>) -> Result<()> {
        ctx.watch(self.listener.as_raw_fd(), LISTENER, EventSet::IN)
    }

    fn queue_notified(&mut self, index: usize, ctx: &mut Context<'_>) -> Result<()> {
        if index == TX {
            self.transmit(ctx)?;
        }
        // New receive buffers, or answers to what the guest sent.
        self.receive(ctx)
    }

    fn fd_ready(&mut self, token: u64, events: EventSet, ctx: &mut Context<'_>) -> Result<()> {
        if token == LISTENER {
            self.accept_all(ctx)?;
        } else if self.handshakes.contains_key(&token) {
            self.handshake(token, ctx)?;
        } else {
            self.stream_ready(token, events, ctx);
        }
        self.receive(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"LISTEN 52"), None);
    }
}
