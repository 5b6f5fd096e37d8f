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

/// Now, on the engine's clock.
#[inline]
pub(crate) fn now() -> Instant {
    Instant::now()
}
