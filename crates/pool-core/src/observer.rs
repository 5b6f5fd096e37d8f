//! [`Observer`]: a hook that sees the engine's timed events as they happen, for exporters that
//! record histograms of their own (OpenTelemetry). It costs one atomic load per event when no
//! observer is attached.

use std::fmt;
use std::time::Duration;

/// Sees a pool's timed events as they happen. Called on the hot path, outside the pool's lock:
/// implementations must be quick and must not block.
///
/// Every method has an empty default, so an observer implements only what it records.
pub trait Observer: Send + Sync + fmt::Debug + 'static {
    /// A caller got a connection after waiting `wait` (zero when it was served from the idle
    /// list without waiting).
    fn acquired(&self, wait: Duration) {
        let _ = wait;
    }

    /// A user's hold of a connection ended after `held`: returned, discarded or detached.
    fn released(&self, held: Duration) {
        let _ = held;
    }

    /// A connection was opened; the connect took `took`.
    fn connected(&self, took: Duration) {
        let _ = took;
    }
}
