//! Adaptive polling of the FUSE device between requests, so that a request arriving soon after
//! a reply is picked up by a running worker instead of waking a sleeping one.
//!
//! Why: a FUSE round trip wakes the daemon's worker, and on a virtual machine whose idle vCPUs
//! halt (these build machines: `haltpoll` with `guest_halt_poll_ns=0`), waking a thread on the
//! other vCPU costs tens of microseconds. Measured here: a `getxattr` through the mount took
//! 46 µs (83 µs with one worker), of which the daemon's own work is a few; with a worker
//! spinning for up to 50 µs after each reply, 33 µs. A metadata walk (`ls -lR`, `rm -rf`)
//! is a chain of such round trips from one process, each issued a few microseconds after the
//! previous reply, so most of them arrive while the worker still polls.
//!
//! How: [`Spin::request`] is called at the start of every handler and returns a guard; when the
//! guard drops (after the handler replied), the worker polls the device with zero-timeout
//! `poll(2)` calls until a request is pending or the budget is spent, and then returns to
//! fuser's blocking read, which finds the request at once. The budget adapts like the kernel's
//! guest halt polling: when the gap from the connection's last reply to the next request was
//! within the maximum, polling would have caught that request and the budget grows (doubling,
//! from `GROW_START`); when the gap was longer, it halves, down to zero. The budget and the
//! last reply are the connection's, not a worker's: the kernel hands a request to whichever
//! worker reads first, so one worker's own gaps say little. A daemon that sees sparse requests
//! (a build that opens a file now and then) does not burn CPU; one serving a walk polls for
//! the whole walk. A fixed per-worker budget measured the same as this; a per-worker adaptive
//! one was worse than no polling at all, because each worker mostly saw the other's requests.
//!
//! Invariants: polling never consumes a request (only `poll`, never `read`), so correctness
//! does not depend on it; a budget of zero (`-o spin=0`) never polls; the device fd is a
//! duplicate of the session's, closed with the adapter.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// The first non-zero budget after a shrink to zero.
const GROW_START: Duration = Duration::from_micros(5);

/// The spin policy of a session: its maximum and current budget and the device to poll.
pub struct Spin {
    max: Duration,
    /// The current budget in nanoseconds, shared by the workers.
    budget_ns: AtomicU64,
    /// When the last reply was sent, in nanoseconds since `epoch` (0: never).
    last_reply_ns: AtomicU64,
    epoch: Instant,
    /// A duplicate of the session's device fd, set once mounted. Every cloned worker fd
    /// shares the connection's single input queue, so any of them shows a pending request.
    device: Arc<OnceLock<OwnedFd>>,
}

/// Polls when dropped (see the module docs).
pub struct AfterReply<'a>(&'a Spin);

impl Spin {
    pub fn new(max: Duration) -> Spin {
        Spin {
            max,
            budget_ns: AtomicU64::new(0),
            last_reply_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            device: Arc::default(),
        }
    }

    /// Where the session puts its device fd once mounted.
    pub fn device_slot(&self) -> Arc<OnceLock<OwnedFd>> {
        self.device.clone()
    }

    /// Called as a request starts: adapts the budget to how long the connection waited for
    /// this request since the last reply. Keep the guard until the handler has replied.
    pub fn request(&self) -> AfterReply<'_> {
        if !self.max.is_zero() {
            let last = self.last_reply_ns.load(Ordering::Relaxed);
            if last != 0 {
                let gap = self.now_ns().saturating_sub(last);
                let budget = Duration::from_nanos(self.budget_ns.load(Ordering::Relaxed));
                let next = self.adapt(budget, Duration::from_nanos(gap));
                self.budget_ns
                    .store(next.as_nanos() as u64, Ordering::Relaxed);
            }
        }
        AfterReply(self)
    }

    fn now_ns(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    fn adapt(&self, budget: Duration, gap: Duration) -> Duration {
        if gap <= self.max {
            (budget * 2).clamp(GROW_START, self.max)
        } else if budget / 2 < GROW_START {
            Duration::ZERO
        } else {
            budget / 2
        }
    }

    fn poll_for(&self, budget: Duration) {
        let Some(fd) = self.device.get() else { return };
        let start = Instant::now();
        let zero = Timespec::default();
        while start.elapsed() < budget {
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            // An error or POLLERR (unmounted) ends polling too: the blocking read reports it.
            if poll(&mut fds, Some(&zero)).map_or(true, |n| n > 0) {
                return;
            }
            // Lets anything else runnable on this CPU go first: polling only fills idle time.
            rustix::thread::sched_yield();
        }
    }
}

impl Drop for AfterReply<'_> {
    fn drop(&mut self) {
        let spin = self.0;
        if spin.max.is_zero() {
            return;
        }
        spin.last_reply_ns.store(spin.now_ns(), Ordering::Relaxed);
        let budget = Duration::from_nanos(spin.budget_ns.load(Ordering::Relaxed));
        if !budget.is_zero() {
            spin.poll_for(budget);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_grows_on_short_gaps_and_shrinks_to_zero_on_long_ones() {
        let s = Spin::new(Duration::from_micros(50));
        let short = Duration::from_micros(10);
        let long = Duration::from_millis(5);
        let mut b = Duration::ZERO;
        for _ in 0..10 {
            b = s.adapt(b, short);
        }
        assert_eq!(b, Duration::from_micros(50));
        b = s.adapt(b, long);
        assert_eq!(b, Duration::from_micros(25));
        for _ in 0..3 {
            b = s.adapt(b, long);
        }
        assert_eq!(b, Duration::ZERO);
        assert_eq!(s.adapt(b, short), GROW_START);
    }

    #[test]
    fn zero_maximum_keeps_no_state() {
        let s = Spin::new(Duration::ZERO);
        drop(s.request());
        drop(s.request());
        assert_eq!(s.last_reply_ns.load(Ordering::Relaxed), 0);
        assert_eq!(s.budget_ns.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn back_to_back_requests_grow_the_budget() {
        let s = Spin::new(Duration::from_millis(500));
        for _ in 0..3 {
            drop(s.request());
        }
        // Two gaps, each far below the maximum: 5 µs, then 10 µs.
        assert_eq!(s.budget_ns.load(Ordering::Relaxed), 10_000);
    }
}
