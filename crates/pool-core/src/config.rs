//! Pool settings ([`PoolConfig`]), their defaults and validation, and the [`Builder`].

use std::time::Duration;

use crate::error::BuildError;
use crate::manager::Manager;
use crate::pool::ConnectionPool;

/// The settings of one pool, with the names operators know from SQLAlchemy.
///
/// Every field has a default (see [`PoolConfig::default`]); [`PoolConfig::validate`] rejects
/// values that make no sense with an error naming the setting and the value.
///
/// With the `serde` feature it reads and writes the keys as named here, durations as numbers of
/// seconds (`pool_core::seconds`), 0 or less for an optional one's `None` (never, or off); a key
/// left out keeps its default. A backend's
/// configuration embeds it flattened, so a file says `pool_size = 5` beside the backend's own
/// keys.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Connections kept open \[10\].
    pub pool_size: usize,
    /// Extra connections opened under load and retired once idle for `idle_timeout` \[20\].
    pub max_overflow: usize,
    /// How long [`acquire`](ConnectionPool::acquire) may wait in all \[30 s\].
    #[cfg_attr(feature = "serde", serde(with = "crate::seconds::positive"))]
    pub pool_timeout: Duration,
    /// How long one connect attempt, one check, one reset or one close may take \[5 s\]; a close
    /// cut off there drops the connection.
    #[cfg_attr(feature = "serde", serde(with = "crate::seconds::positive"))]
    pub connect_timeout: Duration,
    /// Maximum lifetime of a connection \[1 h\]; `None` keeps connections forever.
    /// A connection in use is never closed under its user: it is retired on return.
    #[cfg_attr(feature = "serde", serde(with = "crate::seconds::zero_is_off"))]
    pub pool_recycle: Option<Duration>,
    /// Negative jitter applied to each connection's lifetime, as a fraction \[0.05\]: a connection
    /// lives between `pool_recycle × (1 − jitter)` and `pool_recycle`, so connections opened
    /// together do not expire together.
    pub recycle_jitter: f64,
    /// Check a connection before handing it out \[true\], but only if it sat idle longer than
    /// `pre_ping_bypass`. Never on release.
    pub pool_pre_ping: bool,
    /// A connection used within this window is handed out without a check \[500 ms\].
    #[cfg_attr(feature = "serde", serde(with = "crate::seconds::non_negative"))]
    pub pre_ping_bypass: Duration,
    /// Hand out the most recently returned idle connection \[true\]; `false` means FIFO.
    pub pool_use_lifo: bool,
    /// Connections opened at start-up and kept open while idle; `None` means `pool_size`.
    /// They are opened in the background, in parallel (up to `max_connecting` at once), so
    /// `build` does not wait for them; [`ConnectionPool::warmed`] does.
    pub min_idle: Option<usize>,
    /// Idle connections beyond `min_idle` are retired after sitting idle this long \[60 s\],
    /// by the maintenance task, which runs at least every half `idle_timeout` while it is set.
    #[cfg_attr(feature = "serde", serde(with = "crate::seconds::zero_is_off"))]
    pub idle_timeout: Option<Duration>,
    /// Period of the maintenance task \[30 s\]: it checks connections idle for a whole period,
    /// retires expired and idle-timed-out ones, and tops up `min_idle`. `None` turns the checks
    /// off; the task still runs for `idle_timeout` and `leak_detection_threshold` (at half of
    /// either), and not at all when both are off too.
    #[cfg_attr(feature = "serde", serde(with = "crate::seconds::zero_is_off"))]
    pub health_check_interval: Option<Duration>,
    /// At most this many connects in flight at once \[2\].
    pub max_connecting: usize,
    /// Report a connection held longer than this \[off\].
    #[cfg_attr(feature = "serde", serde(with = "crate::seconds::zero_is_off"))]
    pub leak_detection_threshold: Option<Duration>,
    /// Open the circuit breaker after this many connects or checks failed in a row \[5\]; 0
    /// turns it off.
    ///
    /// While it is open, an acquire that finds nothing idle fails at once with
    /// [`AcquireError::Unavailable`](crate::AcquireError::Unavailable), naming the last
    /// connect error and when the next probe runs, instead of waiting `pool_timeout` for
    /// connects that keep failing; callers already waiting fail the same way as it opens. One
    /// probe connect at a time tries the server, the first within 100 ms, then with a backoff
    /// doubling from 100 ms up to 2 s, with jitter, whether or not anyone waits, so the pool
    /// learns when the server is back; the first connect that succeeds closes the breaker. A
    /// connect or a check that succeeds sets the count back to zero.
    pub breaker_threshold: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            pool_size: 10,
            max_overflow: 20,
            pool_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            pool_recycle: Some(Duration::from_secs(3600)),
            recycle_jitter: 0.05,
            pool_pre_ping: true,
            pre_ping_bypass: Duration::from_millis(500),
            pool_use_lifo: true,
            min_idle: None,
            idle_timeout: Some(Duration::from_secs(60)),
            health_check_interval: Some(Duration::from_secs(30)),
            max_connecting: 2,
            leak_detection_threshold: None,
            breaker_threshold: 5,
        }
    }
}

/// The largest `pool_size + max_overflow` a pool accepts.
const MAX_CONNECTIONS: usize = 100_000;

/// The longest duration a setting accepts: 100 years, which is as good as never. Longer ones
/// would overflow the engine's clock when added to now.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl PoolConfig {
    /// The engine's environment variables, named after the backend's prefix: `POOL_SIZE` is
    /// `DATABASE_POOL_SIZE` for pool-postgres and `REDIS_POOL_SIZE` for pool-redis, so every
    /// backend reads the same five the same way. Seconds are read as
    /// [`Seconds`](crate::Seconds) says: `POOL_TIMEOUT` greater than zero, `POOL_RECYCLE` 0 or
    /// less for never (SQLAlchemy's `-1`); `POOL_BREAKER_THRESHOLD` 0 turns the breaker off.
    pub const ENV: &'static [crate::EnvVar<PoolConfig>] = &[
        crate::EnvVar {
            name: "POOL_SIZE",
            key: "pool_size",
            form: crate::EnvForm::Count,
            set: |c, v| {
                c.pool_size = v.count()?;
                Ok(())
            },
        },
        crate::EnvVar {
            name: "POOL_OVERFLOW",
            key: "max_overflow",
            form: crate::EnvForm::Count,
            set: |c, v| {
                c.max_overflow = v.count()?;
                Ok(())
            },
        },
        crate::EnvVar {
            name: "POOL_TIMEOUT",
            key: "pool_timeout",
            form: crate::EnvForm::Seconds(crate::Seconds::Positive),
            set: |c, v| {
                c.pool_timeout = v.duration(crate::Seconds::Positive)?.unwrap_or_default();
                Ok(())
            },
        },
        crate::EnvVar {
            name: "POOL_RECYCLE",
            key: "pool_recycle",
            form: crate::EnvForm::Seconds(crate::Seconds::ZeroIsOff),
            set: |c, v| {
                c.pool_recycle = v.duration(crate::Seconds::ZeroIsOff)?;
                Ok(())
            },
        },
        crate::EnvVar {
            name: "POOL_BREAKER_THRESHOLD",
            key: "breaker_threshold",
            form: crate::EnvForm::Count,
            set: |c, v| {
                let n = v.count()?;
                c.breaker_threshold =
                    u32::try_from(n).map_err(|_| format!("must be at most {}", u32::MAX))?;
                Ok(())
            },
        },
    ];

    /// The most connections the pool may have open at once: `pool_size + max_overflow`.
    pub fn max_size(&self) -> usize {
        self.pool_size.saturating_add(self.max_overflow)
    }

    /// The warm connections kept: `min_idle`, or `pool_size` when unset, never above `pool_size`.
    pub fn effective_min_idle(&self) -> usize {
        self.min_idle.unwrap_or(self.pool_size).min(self.pool_size)
    }

    /// Checks every setting.
    ///
    /// When `pool_size + max_overflow` is over the limit of 100000 connections, the error
    /// names the setting that is over its share: `pool_size` when it exceeds the limit alone
    /// or is the larger of the two, `max_overflow` otherwise, with the other one's value in
    /// the reason (`pool_size = 100000: must not exceed 99996, as pool_size + max_overflow
    /// (4) must not exceed 100000`).
    ///
    /// # Errors
    ///
    /// [`BuildError::Invalid`] naming the first setting whose value makes no sense.
    pub fn validate(&self) -> Result<(), BuildError> {
        self.validate_blaming(None)
    }

    /// [`validate`](Self::validate) for a resize from `from` (`pool_size`, `max_overflow`) to
    /// this config's size: a size over the limit blames the one of the two that changed, the
    /// key the caller sent, and falls back on `validate`'s choice when both changed.
    pub(crate) fn validate_resize(&self, from: (usize, usize)) -> Result<(), BuildError> {
        let changed = match (self.pool_size != from.0, self.max_overflow != from.1) {
            (true, false) => Some(SizeSetting::PoolSize),
            (false, true) => Some(SizeSetting::MaxOverflow),
            _ => None,
        };
        self.validate_blaming(changed)
    }

    /// Checks every setting; `changed` picks the setting blamed for a size over the limit.
    fn validate_blaming(&self, changed: Option<SizeSetting>) -> Result<(), BuildError> {
        fn invalid(
            setting: &'static str,
            value: impl std::fmt::Debug,
            reason: impl Into<String>,
        ) -> BuildError {
            BuildError::Invalid { setting, value: format!("{value:?}"), reason: reason.into() }
        }
        let at_most = |setting, d: Duration| {
            if d <= MAX_DURATION {
                Ok(())
            } else if matches!(
                setting,
                "pool_recycle"
                    | "idle_timeout"
                    | "health_check_interval"
                    | "leak_detection_threshold"
            ) {
                Err(invalid(setting, d, "must be at most 100 years (use `None` for never)"))
            } else {
                Err(invalid(setting, d, "must be at most 100 years"))
            }
        };
        let positive = |setting, d: Duration| {
            if d.is_zero() {
                Err(invalid(setting, d, "must be greater than zero"))
            } else {
                at_most(setting, d)
            }
        };
        if self.pool_size == 0 {
            return Err(invalid("pool_size", 0, "must be at least 1"));
        }
        if let Some((setting, value, reason)) =
            size_error(self.pool_size, self.max_overflow, changed)
        {
            return Err(invalid(setting, value, reason));
        }
        positive("pool_timeout", self.pool_timeout)?;
        positive("connect_timeout", self.connect_timeout)?;
        at_most("pre_ping_bypass", self.pre_ping_bypass)?;
        if let Some(d) = self.pool_recycle {
            positive("pool_recycle", d)?;
        }
        if !(0.0..=0.5).contains(&self.recycle_jitter) {
            return Err(invalid(
                "recycle_jitter",
                self.recycle_jitter,
                "must be between 0 and 0.5",
            ));
        }
        if let Some(min_idle) = self.min_idle
            && min_idle > self.pool_size
        {
            let reason = format!("must be at most pool_size ({})", self.pool_size);
            return Err(invalid("min_idle", min_idle, reason));
        }
        if let Some(d) = self.idle_timeout {
            positive("idle_timeout", d)?;
        }
        if let Some(d) = self.health_check_interval {
            positive("health_check_interval", d)?;
        }
        if self.max_connecting == 0 {
            return Err(invalid("max_connecting", 0, "must be at least 1"));
        }
        if let Some(d) = self.leak_detection_threshold {
            positive("leak_detection_threshold", d)?;
        }
        Ok(())
    }
}

/// One of the two settings whose sum [`MAX_CONNECTIONS`] limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeSetting {
    PoolSize,
    MaxOverflow,
}

/// The setting to blame, its value and why, when `pool_size + max_overflow` is over
/// [`MAX_CONNECTIONS`]; `None` when it is not.
///
/// A setting over the limit on its own is blamed first (`pool_size` before `max_overflow`).
/// Otherwise `changed` is blamed, if given, else the larger of the two, `max_overflow` on a
/// tie: a `pool_size` of 100000 with the default `max_overflow` is `pool_size`'s fault.
fn size_error(
    pool_size: usize,
    max_overflow: usize,
    changed: Option<SizeSetting>,
) -> Option<(&'static str, usize, String)> {
    if pool_size.checked_add(max_overflow).is_some_and(|max| max <= MAX_CONNECTIONS) {
        return None;
    }
    let blamed = if pool_size > MAX_CONNECTIONS {
        SizeSetting::PoolSize
    } else if max_overflow > MAX_CONNECTIONS {
        SizeSetting::MaxOverflow
    } else {
        changed.unwrap_or(if pool_size > max_overflow {
            SizeSetting::PoolSize
        } else {
            SizeSetting::MaxOverflow
        })
    };
    Some(match blamed {
        SizeSetting::PoolSize if pool_size > MAX_CONNECTIONS => (
            "pool_size",
            pool_size,
            format!("must not exceed {MAX_CONNECTIONS}, the limit on pool_size + max_overflow"),
        ),
        SizeSetting::PoolSize => (
            "pool_size",
            pool_size,
            format!(
                "must not exceed {}, as pool_size + max_overflow ({max_overflow}) must not exceed {MAX_CONNECTIONS}",
                MAX_CONNECTIONS - max_overflow
            ),
        ),
        SizeSetting::MaxOverflow => (
            "max_overflow",
            max_overflow,
            format!(
                "must not exceed {}, as pool_size ({pool_size}) + max_overflow must not exceed {MAX_CONNECTIONS}",
                MAX_CONNECTIONS - pool_size
            ),
        ),
    })
}

/// Builds a [`ConnectionPool`]: `ConnectionPool::builder(manager).pool_size(5).build()`.
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<M> {
    pub(crate) manager: M,
    pub(crate) name: String,
    pub(crate) config: PoolConfig,
    /// Whether the pool reads tokio's clock ([`tokio_clock`](Self::tokio_clock)).
    #[cfg(feature = "testing")]
    pub(crate) tokio_clock: bool,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty),* $(,)?) => {$(
        $(#[$doc])*
        pub fn $field(mut self, value: $ty) -> Self {
            self.config.$field = value;
            self
        }
    )*};
}

impl<M: Manager> Builder<M> {
    pub(crate) fn new(manager: M) -> Self {
        Builder {
            manager,
            name: "default".to_owned(),
            config: PoolConfig::default(),
            #[cfg(feature = "testing")]
            tokio_clock: false,
        }
    }

    /// The pool's name in stats, metrics, logs and errors ["default"].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Replaces every setting at once.
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    setters! {
        /// See [`PoolConfig::pool_size`].
        pool_size: usize,
        /// See [`PoolConfig::max_overflow`].
        max_overflow: usize,
        /// See [`PoolConfig::pool_timeout`].
        pool_timeout: Duration,
        /// See [`PoolConfig::connect_timeout`].
        connect_timeout: Duration,
        /// See [`PoolConfig::pool_recycle`].
        pool_recycle: Option<Duration>,
        /// See [`PoolConfig::recycle_jitter`].
        recycle_jitter: f64,
        /// See [`PoolConfig::pool_pre_ping`].
        pool_pre_ping: bool,
        /// See [`PoolConfig::pre_ping_bypass`].
        pre_ping_bypass: Duration,
        /// See [`PoolConfig::pool_use_lifo`].
        pool_use_lifo: bool,
        /// See [`PoolConfig::min_idle`].
        min_idle: Option<usize>,
        /// See [`PoolConfig::idle_timeout`].
        idle_timeout: Option<Duration>,
        /// See [`PoolConfig::health_check_interval`].
        health_check_interval: Option<Duration>,
        /// See [`PoolConfig::max_connecting`].
        max_connecting: usize,
        /// See [`PoolConfig::leak_detection_threshold`].
        leak_detection_threshold: Option<Duration>,
        /// See [`PoolConfig::breaker_threshold`].
        breaker_threshold: u32,
    }

    /// Makes the pool read tokio's clock rather than the CPU's counter (feature `testing`): for
    /// a test that pauses and advances tokio's clock, whose pool's idle times, lifetimes, waits,
    /// connect and hold times then move with it. A pool built without it reads the clock that
    /// ships, whatever features are on.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use pool_core::{ConnectionPool, testing::TestManager};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// tokio::time::pause();
    /// let pool = ConnectionPool::builder(TestManager::new()).tokio_clock().build()?;
    /// let conn = pool.acquire().await?;
    /// tokio::time::advance(Duration::from_secs(60)).await;
    /// drop(conn);
    /// assert_eq!(pool.stats().in_use_time, Duration::from_secs(60));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "testing")]
    pub fn tokio_clock(mut self) -> Self {
        self.tokio_clock = true;
        self
    }

    /// Validates the settings and starts the pool: its maintenance task and the warm-up of
    /// `min_idle` connections, both in the background. To hold start-up until the warm-up is
    /// done, await [`ConnectionPool::warmed`] on the pool it returns.
    ///
    /// # Errors
    ///
    /// [`BuildError::Invalid`] for a setting that makes no sense (a zero `pool_size`, a zero
    /// `pool_timeout`...), [`BuildError::NoRuntime`] outside a tokio runtime.
    pub fn build(self) -> Result<ConnectionPool<M>, BuildError> {
        if self.name.is_empty() {
            return Err(BuildError::Invalid {
                setting: "name",
                value: "\"\"".to_owned(),
                reason: "must not be empty".to_owned(),
            });
        }
        self.config.validate()?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        Ok(ConnectionPool::start(self, &handle))
    }
}

/// Seconds as a setting's text writes them (an environment variable's, say): a decimal number,
/// optionally signed, with an optional fraction and exponent (`30`, `0.5`, `-1`, `1e3`), blanks
/// around it ignored. `inf`, `NaN`, units (`30s`), hexadecimal and `_` separators are refused.
/// What zero or less means (never, off, or an error) is each setting's to say.
///
/// The toolkit's readers of environment variables (`pool-postgres`, `pool-redis`,
/// `pool-admin`) all parse through this function and [`parse_count`], so that one text has one
/// meaning everywhere.
///
/// # Errors
///
/// [`NumberError::Seconds`] for text of another form, [`NumberError::SecondsOutOfRange`] for a
/// number too large for an `f64` (`1e400`) or a positive one too small for one (`1e-400`).
///
/// # Examples
///
/// ```
/// use pool_core::{NumberError, parse_seconds};
///
/// assert_eq!(parse_seconds(" 1e3\n"), Ok(1000.0));
/// assert_eq!(parse_seconds("-1"), Ok(-1.0));
/// assert_eq!(parse_seconds("inf"), Err(NumberError::Seconds));
/// ```
pub fn parse_seconds(text: &str) -> Result<f64, NumberError> {
    let text = text.trim();
    // Rust's own parser, less the words it also takes (`inf`, `infinity`, `nan`).
    let decimal =
        text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    let secs: f64 = text.parse().ok().filter(|_| decimal).ok_or(NumberError::Seconds)?;
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let underflow = secs == 0.0 && mantissa.bytes().any(|b| matches!(b, b'1'..=b'9'));
    if secs.is_finite() && !underflow { Ok(secs) } else { Err(NumberError::SecondsOutOfRange) }
}

/// A count (of connections) as a setting's text writes it: a whole number, optionally with a
/// `+` (`10`, `+10`, `010`), blanks around it ignored. A sign `-`, a fraction, an exponent and
/// units are refused.
///
/// # Errors
///
/// [`NumberError::Count`] for text of another form, [`NumberError::CountOutOfRange`] for a
/// number larger than `usize`.
///
/// # Examples
///
/// ```
/// use pool_core::{NumberError, parse_count};
///
/// assert_eq!(parse_count(" 10\n"), Ok(10));
/// assert_eq!(parse_count("1e3"), Err(NumberError::Count));
/// ```
pub fn parse_count(text: &str) -> Result<usize, NumberError> {
    let text = text.trim();
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberError::Count);
    }
    digits.parse().map_err(|_| NumberError::CountOutOfRange)
}

/// Why a setting's text is not a number of the form [`parse_seconds`] or [`parse_count`]
/// reads; each message says which forms are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NumberError {
    /// Not a decimal number.
    #[error("expected seconds as a number such as 30, 0.5 or 1e3")]
    Seconds,
    /// A decimal number beyond what an `f64` holds.
    #[error("is out of range: seconds run from 1e-9 (a nanosecond) to 3153600000 (100 years)")]
    SecondsOutOfRange,
    /// Not a whole number.
    #[error("expected a whole number such as 10")]
    Count,
    /// A whole number larger than `usize`.
    #[error("is out of range: expected a whole number such as 10")]
    CountOutOfRange,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(pool_size: usize, max_overflow: usize) -> PoolConfig {
        PoolConfig { pool_size, max_overflow, ..PoolConfig::default() }
    }

    /// A sum over the limit names the setting over its share, with the other one's value.
    #[test]
    fn the_size_limit_names_the_setting_over_its_share() {
        let cases: [((usize, usize), Option<&str>); 8] = [
            ((100_000, 0), None),
            ((99_990, 10), None),
            (
                (100_000, 4),
                Some(
                    "invalid pool setting pool_size = 100000: must not exceed 99996, as pool_size + max_overflow (4) must not exceed 100000",
                ),
            ),
            (
                (200_000, 0),
                Some(
                    "invalid pool setting pool_size = 200000: must not exceed 100000, the limit on pool_size + max_overflow",
                ),
            ),
            (
                (200_000, usize::MAX),
                Some(
                    "invalid pool setting pool_size = 200000: must not exceed 100000, the limit on pool_size + max_overflow",
                ),
            ),
            (
                (10, 99_991),
                Some(
                    "invalid pool setting max_overflow = 99991: must not exceed 99990, as pool_size (10) + max_overflow must not exceed 100000",
                ),
            ),
            (
                (99_999, usize::MAX),
                Some(
                    "invalid pool setting max_overflow = 18446744073709551615: must not exceed 1, as pool_size (99999) + max_overflow must not exceed 100000",
                ),
            ),
            // A tie blames the extra connections.
            (
                (50_001, 50_001),
                Some(
                    "invalid pool setting max_overflow = 50001: must not exceed 49999, as pool_size (50001) + max_overflow must not exceed 100000",
                ),
            ),
        ];
        for ((pool_size, max_overflow), expected) in cases {
            let got = sized(pool_size, max_overflow).validate().map_err(|e| e.to_string());
            assert_eq!(
                got,
                expected.map_or(Ok(()), |e| Err(e.to_owned())),
                "{pool_size}+{max_overflow}"
            );
        }
    }

    /// A resize over the limit names the setting it changed, whichever is larger.
    #[test]
    fn a_resize_over_the_size_limit_names_the_setting_it_changed() {
        for (from, (pool_size, max_overflow), expected) in [
            ((10, 4), (100_000, 4), "pool_size = 100000: must not exceed 99996"),
            ((99_990, 0), (99_990, 20), "max_overflow = 20: must not exceed 10"),
            ((10, 99_990), (20, 99_990), "pool_size = 20: must not exceed 10"),
            // Both changed: the larger one, as `validate` picks.
            ((10, 20), (99_990, 20_000), "pool_size = 99990: must not exceed 80000"),
        ] {
            let err = sized(pool_size, max_overflow).validate_resize(from).unwrap_err().to_string();
            assert!(err.contains(expected), "{from:?} to {pool_size}+{max_overflow}: {err}");
        }
        assert_eq!(sized(99_990, 10).validate_resize((10, 20)), Ok(()));
    }

    /// The forms every reader of the toolkit's variables takes, and those it refuses.
    #[test]
    fn numbers_are_read_in_one_form() {
        let seconds: [(&str, Result<f64, NumberError>); 16] = [
            ("30", Ok(30.0)),
            (" 2.5\n", Ok(2.5)),
            ("+30", Ok(30.0)),
            (".5", Ok(0.5)),
            ("1e3", Ok(1000.0)),
            ("1.5E-1", Ok(0.15)),
            ("-1", Ok(-1.0)),
            ("0", Ok(0.0)),
            ("inf", Err(NumberError::Seconds)),
            ("-infinity", Err(NumberError::Seconds)),
            ("NaN", Err(NumberError::Seconds)),
            ("30s", Err(NumberError::Seconds)),
            ("", Err(NumberError::Seconds)),
            ("1_000", Err(NumberError::Seconds)),
            ("1e400", Err(NumberError::SecondsOutOfRange)),
            ("1e-400", Err(NumberError::SecondsOutOfRange)),
        ];
        for (text, expected) in seconds {
            assert_eq!(parse_seconds(text), expected, "{text:?}");
        }
        let counts: [(&str, Result<usize, NumberError>); 9] = [
            ("10", Ok(10)),
            (" +10\n", Ok(10)),
            ("010", Ok(10)),
            ("-0", Err(NumberError::Count)),
            ("1.0", Err(NumberError::Count)),
            ("1e3", Err(NumberError::Count)),
            ("+", Err(NumberError::Count)),
            ("", Err(NumberError::Count)),
            ("18446744073709551616", Err(NumberError::CountOutOfRange)),
        ];
        for (text, expected) in counts {
            assert_eq!(parse_count(text), expected, "{text:?}");
        }
    }
}
