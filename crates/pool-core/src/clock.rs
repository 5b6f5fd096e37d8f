//! The clock behind the engine's hot-path timestamps (checkout, return, idle and lifetime).
//!
//! Normal builds read the CPU's timestamp counter through `quanta`, several times cheaper than
//! `std::time::Instant::now()`; with the `testing` feature the engine reads tokio's clock, so
//! tests can pause and advance time. Deadlines of waits always use tokio's clock, since tokio's
//! timers serve them.

#[cfg(not(feature = "testing"))]
pub(crate) use quanta::Instant;
#[cfg(feature = "testing")]
pub(crate) use tokio::time::Instant;

use std::time::Duration;

/// `now + d`, or a moment a century ahead (as good as never) when that would overflow: the
/// engine's clock counts nanoseconds in a `u64`, so `Duration::MAX` cannot be added to it.
#[inline]
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).or_else(|| now.checked_add(crate::config::MAX_DURATION)).unwrap_or(now)
}

/// Now, on the engine's clock.
#[inline]
pub(crate) fn now() -> Instant {
    Instant::now()
}
