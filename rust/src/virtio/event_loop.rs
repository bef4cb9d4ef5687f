//! A virtio device's thread: it waits on the queue notification eventfds
//! (signalled inside KVM when the guest writes QueueNotify), the fds its
//! handler watches, the VM's pause/stop wake-up and the transport's reset,
//! and runs the handler for each. It parks while the VM is paused and ends
//! on stop or reset.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::Interrupt;
use super::{queue_error, Memory, QueueHandler};
use crate::error::{Error, Result};
use crate::worker::WorkerControl;

const WAKE: u64 = u64::MAX;
const RESET: u64 = u64::MAX - 1;
/// Tokens below this are queue indices; handlers use tokens from here on.
pub const HANDLER_TOKENS: u64 = 1 << 32;
const EVENTS_PER_WAIT: usize = 32;

/// What the device thread shares with the transport.
pub struct Shared {
    pub kind: &'static str,
    pub memory: Arc<Memory>,
    pub queues: Arc<Mutex<Vec<Queue>>>,
    pub notifiers: Arc<Vec<EventFd>>,
    pub interrupt: Arc<Interrupt>,
    pub control: Arc<WorkerControl>,
}

/// What a handler works with: guest memory, the queues, the interrupt, and
/// the epoll set for its own fds.
pub struct Context<'a> {
    pub memory: &'a Memory,
    queues: &'a Mutex<Vec<Queue>>,
    interrupt: &'a Interrupt,
    epoll: &'a Epoll,
    kind: &'static str,
}

impl Context<'_> {
    /// Hands each available descriptor chain of queue `index` to `serve`,
    /// which returns the bytes it wrote into the chain, or None to leave it
    /// (and the rest) available for later; then interrupts the guest if it
    /// asked to be told (EVENT_IDX) about the used buffers.
    pub fn serve<F>(&self, index: usize, mut serve: F) -> Result<()>
    where
        F: FnMut(&mut DescriptorChain<&Memory>) -> Option<u32>,
    {
        let error = queue_error(self.kind);
        let mut queues = self.queues();
        let queue = &mut queues[index];
        let memory = self.memory;
        let mut used = false;
        loop {
            queue.disable_notification(memory).map_err(&error)?;
            while let Some(mut chain) = queue.pop_descriptor_chain(memory) {
                let Some(length) = serve(&mut chain) else {
                    queue.go_to_previous_position();
                    queue.enable_notification(memory).map_err(&error)?;
                    return self.notify(queue, used);
                };
                queue
                    .add_used(memory, chain.head_index(), length)
                    .map_err(&error)?;
                used = true;
            }
            if !queue.enable_notification(memory).map_err(&error)? {
                return self.notify(queue, used);
            }
        }
    }

    fn notify(&self, queue: &mut Queue, used: bool) -> Result<()> {
        let wanted = queue
            .needs_notification(self.memory)
            .map_err(queue_error(self.kind))?;
        if used && wanted {
            self.interrupt.used_buffer()?;
        }
        Ok(())
    }

    fn queues(&self) -> MutexGuard<'_, Vec<Queue>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches `fd` for `events`; `fd_ready` gets `token` (>= HANDLER_TOKENS).
    pub fn watch(&self, fd: RawFd, token: u64, events: EventSet) -> Result<()> {
        self.epoll_ctl(ControlOperation::Add, fd, token, events)
    }

    /// Changes the events watched on `fd`.
    pub fn rewatch(&self, fd: RawFd, token: u64, events: EventSet) -> Result<()> {
        self.epoll_ctl(ControlOperation::Modify, fd, token, events)
    }

    /// Stops watching `fd` (before it is closed).
    pub fn unwatch(&self, fd: RawFd) -> Result<()> {
        self.epoll_ctl(ControlOperation::Delete, fd, 0, EventSet::empty())
    }

    fn epoll_ctl(
        &self,
        op: ControlOperation,
        fd: RawFd,
        token: u64,
        events: EventSet,
    ) -> Result<()> {
        self.epoll
            .ctl(op, fd, EpollEvent::new(events, token))
            .map_err(|e| Error::Device(format!("{}: epoll_ctl on fd {fd}: {e}", self.kind)))
    }
}

/// A running device thread; `end` stops and joins it.
pub struct Worker {
    reset: Arc<EventFd>,
    thread: JoinHandle<()>,
}

impl Worker {
    pub fn spawn(shared: Shared, handler: Box<dyn QueueHandler>) -> Result<Self> {
        let kind = shared.kind;
        let io_error =
            |e: io::Error| Error::Device(format!("{kind}: cannot start the device thread: {e}"));
        let reset = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io_error)?);
        let epoll = watch_set(&shared, &reset).map_err(io_error)?;
        let thread_reset = reset.clone();
        let thread = thread::Builder::new()
            .name(format!("pyfastvm-{}", shared.kind))
            .spawn(move || {
                let _keep = thread_reset;
                run(&shared, &epoll, handler);
                shared.control.finished();
            })
            .map_err(io_error)?;
        Ok(Worker { reset, thread })
    }

    /// Ends the thread (the transport is being reset or dropped) and waits for it.
    pub fn end(self) {
        // A full counter only means a wake-up is pending already.
        let _ = self.reset.write(1);
        let _ = self.thread.join();
    }
}

/// The queue notifiers, the VM's wake-up and the reset, in one epoll set.
fn watch_set(shared: &Shared, reset: &EventFd) -> io::Result<Epoll> {
    let epoll = Epoll::new()?;
    let add = |fd: RawFd, token: u64| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    };
    for (index, notifier) in shared.notifiers.iter().enumerate() {
        add(notifier.as_raw_fd(), index as u64)?;
    }
    add(shared.control.wake_fd(), WAKE)?;
    add(reset.as_raw_fd(), RESET)?;
    Ok(epoll)
}

fn run(shared: &Shared, epoll: &Epoll, mut handler: Box<dyn QueueHandler>) {
    let mut ctx = Context {
        memory: &shared.memory,
        queues: &shared.queues,
        interrupt: &shared.interrupt,
        epoll,
        kind: shared.kind,
    };
    // A VM paused before the device started keeps it parked here.
    if !shared.control.checkpoint() {
        return;
    }
    if let Err(e) = handler.start(&mut ctx) {
        return report(shared.kind, &e);
    }
    let mut events = vec![EpollEvent::default(); EVENTS_PER_WAIT];
    loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(ready) => ready,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return report(shared.kind, &Error::Device(format!("epoll_wait: {e}"))),
        };
        for event in &events[..ready] {
            let result = match event.data() {
                RESET => return,
                WAKE if !shared.control.checkpoint() => return,
                WAKE => Ok(()),
                index if index < HANDLER_TOKENS => {
                    let _ = shared.notifiers[index as usize].read();
                    handler.queue_notified(index as usize, &mut ctx)
                }
                token => handler.fd_ready(token, event.event_set(), &mut ctx),
            };
            if let Err(e) = result {
                return report(shared.kind, &e);
            }
        }
    }
}

/// A device that cannot go on stops serving; the guest sees its requests
/// go unanswered, and the host is told why.
fn report(kind: &str, error: &Error) {
    eprintln!("pyfastvm: the {kind} device stopped: {error}");
}
