//! Event-loop subscriber for the vsock device: the three queue eventfds, the
//! listening unix socket, a timer for connection deadlines, and each host
//! stream, whose interest (EPOLLIN / EPOLLOUT, or none) follows the device's
//! [`FdOp`]s so that nothing is watched that cannot make progress.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::device::Vsock;
use super::muxer::FdOp;

/// Subscriber serving a [`Vsock`] device.
pub struct VsockEventHandler {
    device: Arc<Mutex<Vsock>>,
    queue_evts: [EventFd; 3],
    listener_fd: RawFd,
    timer: TimerFd,
    interest_errors: u64,
}

/// A non-blocking monotonic timerfd: reading it after a re-arm in the same
/// epoll batch must not block the loop.
fn nonblocking_timer() -> std::io::Result<TimerFd> {
    // SAFETY: plain system call; the result is checked.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh timerfd nobody else owns.
    Ok(unsafe { TimerFd::from_raw_fd(fd) })
}

impl VsockEventHandler {
    /// Handler for `device`; fails if an eventfd cannot be duplicated or the
    /// timer cannot be created.
    pub fn new(device: Arc<Mutex<Vsock>>) -> std::io::Result<Self> {
        let (queue_evts, listener_fd) = {
            let d = match device.lock() {
                Ok(d) => d,
                Err(p) => p.into_inner(),
            };
            let e = d.queue_evts();
            (
                [e[0].try_clone()?, e[1].try_clone()?, e[2].try_clone()?],
                d.listener_fd(),
            )
        };
        Ok(VsockEventHandler {
            device,
            queue_evts,
            listener_fd,
            timer: nonblocking_timer()?,
            interest_errors: 0,
        })
    }

    /// How many interest changes the event loop refused (a bug if not 0).
    pub fn interest_errors(&self) -> u64 {
        self.interest_errors
    }

    fn apply(&mut self, device: &mut Vsock, ops: &mut EventOps) {
        for op in device.take_fd_ops() {
            let res = match &op {
                FdOp::Add(fd, set) => ops.add(Events::new_raw(*fd, *set)),
                FdOp::Modify(fd, set) => ops.modify(Events::new_raw(*fd, *set)),
                FdOp::Remove(fd, _) => ops.remove(Events::empty_raw(*fd)),
                FdOp::Close(_) => Ok(()),
            };
            if let Err(e) = res {
                self.interest_errors += 1;
                log::error!("vmm: vsock: updating event interest ({op:?}): {e}");
            }
            // A removed stream is closed here, after it left the loop.
            drop(op);
        }
        let wait = device
            .muxer()
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        let res = match wait {
            // A zero duration would disarm the timer.
            Some(w) => self.timer.reset(w.max(Duration::from_millis(1)), None),
            None => self.timer.clear(),
        };
        if let Err(e) = res {
            log::error!("vmm: vsock: arming the timer: {e}");
        }
    }
}

impl MutEventSubscriber for VsockEventHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        let device = self.device.clone();
        let mut d = match device.lock() {
            Ok(d) => d,
            Err(_) => {
                log::error!("vmm: vsock: device lock poisoned");
                return;
            }
        };
        if let Some(i) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) {
            // Non-blocking eventfd: EAGAIN only means a spurious wake-up.
            let _ = self.queue_evts[i].read();
            d.handle_queue_event(i);
        } else if fd == self.timer.as_raw_fd() {
            // Non-blocking: nothing to read if re-armed meanwhile.
            let _ = self.timer.wait();
            d.handle_timeouts();
        } else if fd == self.listener_fd {
            d.handle_listener();
        } else {
            d.handle_stream(fd, set);
        }
        self.apply(&mut d, ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("vmm: vsock: registering a queue eventfd: {e}");
            }
        }
        if let Err(e) = ops.add(Events::new_raw(self.listener_fd, EventSet::IN)) {
            log::error!("vmm: vsock: registering the listening socket: {e}");
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("vmm: vsock: registering the timer: {e}");
        }
        let device = self.device.clone();
        if let Ok(mut d) = device.lock() {
            self.apply(&mut d, ops);
        };
    }
}
