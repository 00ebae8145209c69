//! Activity, for idle exit: admin requests (and, through the run
//! authority, the runs' requests) keep the daemon from idling out.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Tracks admin-API activity for idle exit.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_nanos: AtomicU64,
    in_flight: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_nanos: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn touch(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// A request starts: the daemon is not idle until it ends.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
    }

    /// A request ended.
    pub fn request_ended(&self) {
        self.touch();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the daemon last became idle, or `None` while a request is in
    /// flight.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.epoch + Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed)))
    }
}
