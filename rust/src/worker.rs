//! Pause, resume and stop for a device's worker thread (a virtio device does
//! its queue work on one), on the same signals as the vCPUs: when the VM
//! pauses, its workers park at a clean point between requests; when it
//! stops, they end.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    Run,
    Pause,
    Stop,
}

struct State {
    wanted: Wanted,
    /// The worker has come to a checkpoint once: it is running.
    started: bool,
    /// The worker is waiting in `checkpoint` for a resume.
    parked: bool,
}

/// Shared by the VMM (which pauses, resumes and stops) and one worker thread
/// (which calls `checkpoint` between requests and watches `wake_fd`).
pub struct WorkerControl {
    state: Mutex<State>,
    changed: Condvar,
    wake: EventFd,
}

impl WorkerControl {
    pub fn new() -> io::Result<Self> {
        Ok(WorkerControl {
            state: Mutex::new(State {
                wanted: Wanted::Run,
                started: false,
                parked: false,
            }),
            changed: Condvar::new(),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Readable when the worker must come to its checkpoint: add it to the
    /// worker's epoll set beside its queue notifications.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Parks the worker at its next checkpoint and waits until it is there
    /// (a worker not started yet parks at its first).
    pub fn pause(&self) {
        let state = self.ask(Wanted::Pause);
        let _parked = self
            .changed
            .wait_while(state, |s| {
                s.wanted == Wanted::Pause && s.started && !s.parked
            })
            .unwrap_or_else(PoisonError::into_inner);
    }

    pub fn resume(&self) {
        drop(self.ask(Wanted::Run));
    }

    /// The worker's next checkpoint tells it to end, paused or not.
    pub fn stop(&self) {
        drop(self.ask(Wanted::Stop));
    }

    fn ask(&self, wanted: Wanted) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        if state.wanted != Wanted::Stop {
            state.wanted = wanted;
        }
        // A full counter only means a wake-up is pending already.
        let _ = self.wake.write(1);
        self.changed.notify_all();
        state
    }

    /// The worker's side, between requests: waits while the VM is paused;
    /// false once the worker must end.
    pub fn checkpoint(&self) -> bool {
        let _ = self.wake.read();
        let mut state = self.lock();
        state.started = true;
        state.parked = true;
        self.changed.notify_all();
        let mut state = self
            .changed
            .wait_while(state, |s| s.wanted == Wanted::Pause)
            .unwrap_or_else(PoisonError::into_inner);
        state.parked = false;
        state.wanted != Wanted::Stop
    }

    /// The worker's side, as its thread ends while the VM goes on (a virtio
    /// device's on reset): a later pause does not wait for it.
    pub fn finished(&self) {
        let mut state = self.lock();
        state.started = false;
        state.parked = false;
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    /// A worker that counts until it is told to end.
    fn start() -> (Arc<WorkerControl>, Arc<AtomicU32>, thread::JoinHandle<()>) {
        let control = Arc::new(WorkerControl::new().unwrap());
        let count = Arc::new(AtomicU32::new(0));
        let (c, n) = (control.clone(), count.clone());
        let worker = thread::spawn(move || {
            while c.checkpoint() {
                n.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(1));
            }
        });
        (control, count, worker)
    }

    #[test]
    fn a_paused_worker_does_no_work_until_resumed() {
        let (control, count, worker) = start();
        control.pause();
        let at_pause = count.load(Ordering::SeqCst);
        thread::sleep(Duration::from_millis(20));
        assert_eq!(count.load(Ordering::SeqCst), at_pause);
        control.resume();
        thread::sleep(Duration::from_millis(20));
        assert!(count.load(Ordering::SeqCst) > at_pause);
        control.stop();
        worker.join().unwrap();
    }

    #[test]
    fn pausing_a_worker_not_started_does_not_wait() {
        let control = WorkerControl::new().unwrap();
        control.pause();
        control.stop();
        assert!(!control.checkpoint());
    }

    #[test]
    fn stop_ends_a_paused_worker() {
        let (control, _, worker) = start();
        control.pause();
        control.stop();
        worker.join().unwrap();
    }
}
