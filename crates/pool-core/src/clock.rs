//! The clock behind the engine's timestamps: checkout, return, idle time, lifetimes, waiter
//! deadlines and the in-use integral.
//!
//! Every pool reads the CPU's timestamp counter through `quanta` (or the OS's monotonic clock
//! where there is no usable counter), several times cheaper than `std::time::Instant::now()`,
//! whatever features the build enables. With the `testing` feature, a pool built with
//! `Builder::tokio_clock` reads tokio's clock instead, so a test that pauses and advances
//! tokio's clock moves that pool's times with it; its instants are then counted on tokio's
//! clock from the moment the pool was built. Enabling the feature changes no pool that does not
//! ask: without it a [`Clock`] has one variant and reading it costs no branch, with it one
//! predictable branch on a field of the pool.
//!
//! The waits of `warmed` and `close` time out on tokio's clock, whose timers serve them; waiter
//! deadlines and pre-ping bounds live on the pool's clock and become tokio sleeps as durations
//! from the pool's now.

use std::time::Duration;

/// A moment on a pool's clock. Only a [`Clock`] makes one, and there is no `elapsed`: every
/// reading of the time goes through the clock its pool chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Instant(quanta::Instant);

impl Instant {
    /// The time from `earlier` to this moment, zero when `earlier` is later.
    #[inline]
    pub(crate) fn duration_since(self, earlier: Instant) -> Duration {
        self.0.duration_since(earlier.0)
    }

    /// This moment plus `d`, `None` past the clock's range.
    #[inline]
    pub(crate) fn checked_add(self, d: Duration) -> Option<Instant> {
        self.0.checked_add(d).map(Instant)
    }
}

/// The clock one pool reads, chosen when it is built.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Clock {
    /// The clock that ships: the CPU's timestamp counter through `quanta`.
    Tsc,
    /// tokio's clock, for tests that pause it: `at` on the engine's clock is `origin` on
    /// tokio's.
    #[cfg(feature = "testing")]
    Tokio { at: Instant, origin: tokio::time::Instant },
}

impl Clock {
    /// tokio's clock from now on, for a pool built now.
    #[cfg(feature = "testing")]
    pub(crate) fn tokio() -> Clock {
        Clock::Tokio { at: Instant(quanta::Instant::now()), origin: tokio::time::Instant::now() }
    }

    /// Now, on this clock.
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        match *self {
            Clock::Tsc => Instant(quanta::Instant::now()),
            #[cfg(feature = "testing")]
            Clock::Tokio { at, origin } => tokio_now(at, origin),
        }
    }

    /// Whether this is tokio's clock rather than the one that ships.
    pub(crate) fn is_tokio(&self) -> bool {
        !matches!(self, Clock::Tsc)
    }
}

/// Now on tokio's clock, as an engine instant: out of line, so the shipping clock's read stays
/// small where it is inlined.
#[cfg(feature = "testing")]
#[cold]
#[inline(never)]
fn tokio_now(at: Instant, origin: tokio::time::Instant) -> Instant {
    after(at, tokio::time::Instant::now().duration_since(origin))
}

/// `now + d`, or a moment a century ahead (as good as never) when that would overflow: the
/// engine's clock counts nanoseconds in a `u64`, so `Duration::MAX` cannot be added to it.
#[inline]
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).or_else(|| now.checked_add(crate::config::MAX_DURATION)).unwrap_or(now)
}
