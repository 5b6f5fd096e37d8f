//! The circuit breaker's state, kept under the pool's lock: the failures in a row, whether it is
//! open and since when, and its one probe. The transitions are here; the connect loop, the
//! check and the acquire path call them.
//!
//! - Closed: every connect or check that fails adds one to the streak; a connect or a check
//!   that succeeds sets it back to zero. At `breaker_threshold` failures in a row the breaker
//!   opens.
//! - Open: an acquire that finds nothing idle fails at once ([`AcquireError::Unavailable`]),
//!   waiters are woken with that error, and no connect starts but the probe's: one connect at a
//!   time, the first within 100 ms, then after a backoff with jitter (100 ms doubling up to
//!   2 s).
//! - The first connect that succeeds (the probe's, or one started before the breaker opened)
//!   closes it.
//!
//! [`AcquireError::Unavailable`]: crate::AcquireError::Unavailable

use std::time::Duration;

use crate::clock::Instant;

/// The longest wait between two probes.
const MAX_PROBE_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub(super) struct Breaker {
    /// Connects and checks failed in a row since the last that succeeded.
    pub(super) streak: u32,
    /// Since when the breaker is open; `None` while closed.
    pub(super) open_since: Option<Instant>,
    /// Whether a probe runs or is about to (at most one does).
    pub(super) probing: bool,
    /// A probe was started and no connect task has taken the part yet: the next connect task
    /// to start takes it.
    pub(super) unclaimed: bool,
    /// When the probe's next attempt starts, while it waits for it.
    pub(super) next_probe: Option<Instant>,
    /// Probe attempts failed since the breaker opened.
    pub(super) probes_failed: u32,
}

impl Breaker {
    pub(super) fn is_open(&self) -> bool {
        self.open_since.is_some()
    }

    /// Counts a failed connect or check at `now`; true when it opened the breaker (`threshold`
    /// 0 never opens it).
    pub(super) fn failed(&mut self, threshold: u32, now: Instant) -> bool {
        self.streak = self.streak.saturating_add(1);
        if threshold == 0 || self.is_open() || self.streak < threshold {
            return false;
        }
        self.open_since = Some(now);
        self.probes_failed = 0;
        true
    }

    /// Counts a check that succeeded: the streak starts again (an open breaker stays open
    /// until a connect succeeds).
    pub(super) fn checked(&mut self) {
        self.streak = 0;
    }

    /// Counts a connect that succeeded: closes the breaker; returns since when it was open.
    pub(super) fn connected(&mut self) -> Option<Instant> {
        self.streak = 0;
        self.next_probe = None;
        self.open_since.take()
    }

    /// Starts the probe while the breaker is open and none runs: true when the caller must
    /// count and start one connect, which takes the part.
    pub(super) fn start_probe(&mut self) -> bool {
        if !self.is_open() || self.probing {
            return false;
        }
        self.probing = true;
        self.unclaimed = true;
        true
    }

    /// How long the probe waits before its next attempt, after `probes_failed` failures:
    /// 100 ms doubling up to 2 s, with jitter (between half and all of it).
    pub(super) fn probe_delay(&self) -> Duration {
        let exp = Duration::from_millis(100).saturating_mul(1 << self.probes_failed.min(16));
        exp.min(MAX_PROBE_DELAY).mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_and_closes_on_a_connect() {
        let now = crate::clock::Clock::Tsc.now();
        let mut b = Breaker::default();
        assert!(!b.failed(3, now));
        assert!(!b.failed(3, now));
        b.checked();
        assert!(!b.failed(3, now) && !b.failed(3, now), "a check that succeeds starts again");
        assert!(b.failed(3, now), "the third in a row opens it");
        assert!(b.is_open());
        assert!(!b.failed(3, now), "already open");
        assert_eq!(b.connected(), Some(now));
        assert!(!b.is_open() && b.streak == 0);
        let mut off = Breaker::default();
        assert!((0..100).all(|_| !off.failed(0, now)), "0 turns it off");
    }

    #[test]
    fn probe_delays_grow_to_the_cap() {
        let mut b = Breaker::default();
        assert!(b.probe_delay() <= Duration::from_millis(100));
        b.probes_failed = 30;
        let d = b.probe_delay();
        assert!(d >= Duration::from_secs(1) && d <= MAX_PROBE_DELAY, "{d:?}");
    }
}
