//! Errors, one type per operation: [`AcquireError`] (with [`TimeoutError`] and
//! [`UnavailableError`]), [`TryAcquireError`], [`BuildError`],
//! [`WarmError`], [`ResizeError`], [`CloseError`], [`RegisterError`], [`ObserveError`].

use std::sync::Arc;
use std::time::Duration;

use crate::pool::PoolState;

/// Why `acquire` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireError<E: std::error::Error + 'static> {
    /// No connection could be had within `pool_timeout`.
    #[error(transparent)]
    Timeout(#[from] TimeoutError<E>),
    /// The pool was closed.
    #[error("pool {pool:?} is closed")]
    Closed {
        /// The pool's name.
        pool: Arc<str>,
    },
    /// The circuit breaker is open: connects (or checks) failed `breaker_threshold` times in a
    /// row, nothing was idle, and the caller failed at once rather than wait `pool_timeout` for
    /// a connect that keeps failing.
    #[error(transparent)]
    Unavailable(#[from] UnavailableError<E>),
}

impl<E: std::error::Error + 'static> AcquireError<E> {
    /// Whether this error is a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, AcquireError::Timeout(_))
    }

    /// Whether the open circuit breaker refused the acquire.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AcquireError::Unavailable(_))
    }

    /// The last connect error this error carries, if any (a timeout's or the breaker's).
    pub fn last_connect_error(&self) -> Option<&Arc<ConnectError<E>>> {
        match self {
            AcquireError::Timeout(t) => t.last_error.as_ref(),
            AcquireError::Unavailable(u) => u.last_error.as_ref(),
            AcquireError::Closed { .. } => None,
        }
    }
}

/// An acquire the open circuit breaker refused at once: how many connects and checks failed in
/// a row, for how long the breaker has been open, when its probe tries next, and the last
/// connect error.
#[derive(Debug, thiserror::Error)]
#[error(
    "pool {pool:?} is unavailable: circuit breaker open for {open_for:?} after {failures} failed connects or checks in a row, {}{}",
    next_probe_in.map_or_else(|| "a probe is connecting now".to_owned(), |d| format!("next probe in {d:?}")),
    last_error.as_ref().map(|e| format!("; last connect error: {e}")).unwrap_or_default()
)]
#[non_exhaustive]
pub struct UnavailableError<E: std::error::Error + 'static> {
    /// The pool's name.
    pub pool: Arc<str>,
    /// Connects and checks failed in a row.
    pub failures: u32,
    /// How long the breaker has been open.
    pub open_for: Duration,
    /// When the probe tries next, if it is waiting (`None` while it connects).
    pub next_probe_in: Option<Duration>,
    /// The most recent connect failure.
    #[source]
    pub last_error: Option<Arc<ConnectError<E>>>,
}

/// An acquire that waited its whole timeout: how long, the pool's state at that moment, and the
/// last connect error if connects were failing.
#[derive(Debug, thiserror::Error)]
#[error(
    "pool {pool:?} timed out after {waited:?} waiting for a connection ({state}){}",
    last_error.as_ref().map(|e| format!("; last connect error: {e}")).unwrap_or_default()
)]
#[non_exhaustive]
pub struct TimeoutError<E: std::error::Error + 'static> {
    /// The pool's name.
    pub pool: Arc<str>,
    /// How long the caller waited.
    pub waited: Duration,
    /// The pool's state when the wait ended.
    pub state: PoolState,
    /// The most recent connect failure, if the pool's last connect attempt failed.
    #[source]
    pub last_error: Option<Arc<ConnectError<E>>>,
}

/// Why a connect attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError<E: std::error::Error + 'static> {
    /// The backend refused or failed.
    #[error(transparent)]
    Backend(E),
    /// The attempt took longer than `connect_timeout`.
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    /// The backend's connect panicked (its message).
    #[error("connect {0}")]
    Panicked(String),
}

/// Why `try_acquire` returned without a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryAcquireError {
    /// No idle connection was ready (or others were already waiting for one).
    #[error("pool {pool:?} has no idle connection ready ({state})")]
    NoneIdle {
        /// The pool's name.
        pool: Arc<str>,
        /// The pool's state at that moment.
        state: PoolState,
    },
    /// The pool was closed.
    #[error("pool {pool:?} is closed")]
    Closed {
        /// The pool's name.
        pool: Arc<str>,
    },
}

/// Why a pool could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting has a value that makes no sense.
    #[error("invalid pool setting {setting} = {value}: {reason}")]
    Invalid {
        /// The setting's name (`pool_size`, `pool_timeout`...).
        setting: &'static str,
        /// The rejected value, as written in Rust's debug format.
        value: String,
        /// What the value must be; it may name the value of a related setting (the size limit
        /// names `max_overflow` when it blames `pool_size`, and the other way round).
        reason: String,
    },
    /// `build` was called outside a tokio runtime.
    #[error("a pool must be built inside a tokio runtime (it spawns its maintenance task)")]
    NoRuntime,
}

/// Why [`ConnectionPool::warmed`](crate::ConnectionPool::warmed) returned before the pool held
/// its `min_idle` connections.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WarmError<E: std::error::Error + 'static> {
    /// Fewer than `min_idle` connections were open when the wait ran out; the warm-up goes on
    /// in the background.
    #[error(
        "pool {pool:?} was not warm after {waited:?}: {open} of {wanted} min_idle connections open{}",
        last_error.as_ref().map(|e| format!("; last connect error: {e}")).unwrap_or_default()
    )]
    Timeout {
        /// The pool's name.
        pool: Arc<str>,
        /// How long the caller waited.
        waited: Duration,
        /// Connections open (idle or in use) when the wait ended.
        open: usize,
        /// The `min_idle` connections wanted.
        wanted: usize,
        /// The most recent connect failure, if the pool's last connect attempt failed.
        #[source]
        last_error: Option<Arc<ConnectError<E>>>,
    },
    /// The pool was closed.
    #[error("pool {pool:?} is closed")]
    Closed {
        /// The pool's name.
        pool: Arc<str>,
    },
}

/// Why a runtime resize was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResizeError {
    /// The new size is invalid.
    #[error("cannot resize pool {pool:?}: {source}")]
    Invalid {
        /// The pool's name.
        pool: Arc<str>,
        /// What was wrong with the new size.
        #[source]
        source: BuildError,
    },
    /// The pool was closed.
    #[error("cannot resize pool {pool:?}: it is closed")]
    Closed {
        /// The pool's name.
        pool: Arc<str>,
    },
}

/// `close` gave up waiting for connections in use to come back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pool {pool:?} closed, but {in_use} connection(s) were still in use after {waited:?}; they close on return"
)]
#[non_exhaustive]
pub struct CloseError {
    /// The pool's name.
    pub pool: Arc<str>,
    /// Connections still open when `close` stopped waiting: mostly ones in use, but a connect,
    /// check or close still in flight counts too.
    pub in_use: usize,
    /// How long `close` waited.
    pub waited: Duration,
}

/// Why a pool could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// A pool with this id (`backend:name`) is registered already.
    #[error("a pool with id {0:?} is already registered")]
    Duplicate(String),
}

/// Why a registry lookup found no pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// No pool has this id or name.
    #[error("no pool named {0:?}")]
    NotFound(String),
    /// Pools of several backends share this name; use an id (`backend:name`).
    #[error("{name:?} names several pools ({}); use one of those ids", ids.join(", "))]
    Ambiguous {
        /// The name asked for.
        name: String,
        /// The ids sharing it.
        ids: Vec<String>,
    },
}

/// Why an observer could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// The pool has an observer already.
    #[error("pool {pool:?} has an observer attached already")]
    AlreadyAttached {
        /// The pool's name.
        pool: Arc<str>,
    },
}
