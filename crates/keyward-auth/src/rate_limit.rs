//! Per-user sliding-window rate limits: a user may make at most `max`
//! requests in any window of the role's length. Kept in memory by the
//! server that answers; with several servers each keeps its own window
//! (a later shared state bounds the sum).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::role::RateLimit;

/// The windows of every user seen.
#[derive(Debug, Default)]
pub struct RateLimiter {
    users: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// Counts a request of `user` at `now` under `limit`: `Ok` if it is
    /// within the limit, else how long until the oldest request in the
    /// window leaves it (the `Retry-After`). A refused request is not
    /// counted.
    pub fn check(&self, user: &str, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let times = users.entry(user.to_owned()).or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= limit.window)
        {
            times.pop_front();
        }
        let max = usize::try_from(limit.max).unwrap_or(usize::MAX);
        // A lowered limit leaves older entries beyond it: only the newest
        // `max` can matter.
        while times.len() > max {
            times.pop_front();
        }
        if times.len() == max {
            let oldest = times.front().copied().unwrap_or(now);
            let wait = limit
                .window
                .saturating_sub(now.saturating_duration_since(oldest));
            return Err(wait.max(Duration::from_millis(1)));
        }
        times.push_back(now);
        Ok(())
    }

    /// Forgets a user (their token was revoked or their role changed).
    pub fn forget(&self, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_slides_and_says_when_to_retry() {
        let limiter = RateLimiter::default();
        let limit = RateLimit {
            max: 3,
            window: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(limiter.check("ci", limit, at(0)).is_ok());
        assert!(limiter.check("ci", limit, at(10)).is_ok());
        assert!(limiter.check("ci", limit, at(20)).is_ok());
        // The fourth within the minute waits until the first leaves.
        assert_eq!(
            limiter.check("ci", limit, at(30)),
            Err(Duration::from_secs(30))
        );
        // Another user has a window of their own.
        assert!(limiter.check("bob", limit, at(30)).is_ok());
        // A refused request did not count: at 60 s the first has left.
        assert!(limiter.check("ci", limit, at(60)).is_ok());
        assert_eq!(
            limiter.check("ci", limit, at(61)),
            Err(Duration::from_secs(9))
        );
        limiter.forget("ci");
        assert!(limiter.check("ci", limit, at(61)).is_ok());
    }
}
