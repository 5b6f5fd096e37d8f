//! [`RedisConfig`]: the server's URL and named pools, each with its [`PoolSettings`], read
//! from code and from the environment (`REDIS_URL`, `REDIS_POOL_SIZE`, `REDIS_MAX_CONNECTIONS`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{ConfigError, redact};

/// The URL used when neither the code nor `REDIS_URL` gives one.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// The server and the named pools opened on it, e.g. a general `main` pool and a larger `cache`.
///
/// [`Default`] gives `redis://127.0.0.1:6379` with `main` (10 kept, at most 20) and `cache`
/// (20 kept, at most 50).
///
/// # Examples
///
/// ```
/// use pool_redis::{PoolSettings, RedisConfig};
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379")
///     .pool("main", PoolSettings::default())
///     .pool("cache", PoolSettings::default().pool_size(32).max_connections(64));
/// assert_eq!(config.pools["cache"].max_connections, 64);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server's URL (`redis://[user:password@]host[:port][/db]`).
    pub url: String,
    /// The pools, by name.
    pub pools: BTreeMap<String, PoolSettings>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig::new(DEFAULT_URL)
            .pool("main", PoolSettings::default())
            .pool("cache", PoolSettings::default().pool_size(20).max_connections(50))
    }
}

impl RedisConfig {
    /// A configuration for `url` with no pool yet.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig { url: url.into(), pools: BTreeMap::new() }
    }

    /// Adds (or replaces) the pool `name`.
    #[must_use]
    pub fn pool(mut self, name: impl Into<String>, settings: PoolSettings) -> Self {
        self.pools.insert(name.into(), settings);
        self
    }

    /// The [default](Self::default) configuration with the process environment applied
    /// (see [`with_env_from`](Self::with_env_from)).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Env`] naming a variable whose value does not parse, and any error of
    /// [`validate`](Self::validate).
    pub fn from_env() -> Result<Self, ConfigError> {
        RedisConfig::default().with_env_from(|var| std::env::var(var).ok())
    }

    /// Applies environment variables read through `lookup`, then validates:
    ///
    /// - `REDIS_URL`: the server's URL;
    /// - `REDIS_POOL_SIZE`, `REDIS_MAX_CONNECTIONS`: the `main` pool's sizes (the pool is added
    ///   if missing);
    /// - `REDIS_<NAME>_POOL_SIZE`, `REDIS_<NAME>_MAX_CONNECTIONS`: the sizes of the pool `name`
    ///   (upper-cased, `-` as `_`), e.g. `REDIS_CACHE_POOL_SIZE`; these win over the unprefixed
    ///   ones for `main`.
    ///
    /// Setting only a pool size above the configured `max_connections` raises
    /// `max_connections` to it.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Env`] naming the variable whose value does not parse, and any error of
    /// [`validate`](Self::validate).
    pub fn with_env_from(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        if let Some(url) = lookup("REDIS_URL") {
            self.url = url;
        }
        let generic =
            (env_usize(&lookup, "REDIS_POOL_SIZE")?, env_usize(&lookup, "REDIS_MAX_CONNECTIONS")?);
        if generic != (None, None) && !self.pools.contains_key("main") {
            self.pools.insert("main".to_owned(), PoolSettings::default());
        }
        for (name, settings) in &mut self.pools {
            let prefix = format!("REDIS_{}_", name.to_uppercase().replace('-', "_"));
            let size = env_usize(&lookup, &format!("{prefix}POOL_SIZE"))?;
            let max = env_usize(&lookup, &format!("{prefix}MAX_CONNECTIONS"))?;
            let (size, max) =
                if name == "main" { (size.or(generic.0), max.or(generic.1)) } else { (size, max) };
            if let Some(size) = size {
                settings.pool_size = size;
                if max.is_none() {
                    settings.max_connections = settings.max_connections.max(size);
                }
            }
            if let Some(max) = max {
                settings.max_connections = max;
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks the URL and every pool's settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Url`] when the URL does not parse, [`ConfigError::NoPools`] when no pool
    /// is named, [`ConfigError::Invalid`] naming the pool and setting that makes no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.fred_config()?;
        if self.pools.is_empty() {
            return Err(ConfigError::NoPools);
        }
        for (name, settings) in &self.pools {
            settings.validate(name)?;
        }
        Ok(())
    }

    /// fred's client configuration for the URL.
    pub(crate) fn fred_config(&self) -> Result<fred::types::config::Config, ConfigError> {
        use fred::error::{Error, ErrorKind};
        let invalid = |source| ConfigError::Url { url: redact(&self.url), source };
        match self.url.split_once("://").map(|(scheme, _)| scheme) {
            Some("redis") => {}
            Some("rediss") => {
                return Err(invalid(Error::new(
                    ErrorKind::Url,
                    "TLS (rediss://) is not enabled in this build",
                )));
            }
            _ => {
                return Err(invalid(Error::new(
                    ErrorKind::Url,
                    "expected redis://[user:password@]host[:port][/db]",
                )));
            }
        }
        fred::types::config::Config::from_url(&self.url).map_err(invalid)
    }
}

/// The variable `var` as a count of connections, in the one form every reader of the toolkit's
/// variables takes ([`pool_core::parse_count`]); `None` when it is not set.
fn env_usize(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &str,
) -> Result<Option<usize>, ConfigError> {
    let Some(value) = lookup(var) else { return Ok(None) };
    pool_core::parse_count(&value).map(Some).map_err(|e| ConfigError::Env {
        var: var.to_owned(),
        value,
        reason: e.to_string(),
    })
}

/// The settings of one named pool, with redis-py's names where it has one.
///
/// Each pool has exclusive connections, checked out one user at a time through the engine
/// (between `pool_size` and `max_connections` of them), and `shared_clients` multiplexed
/// clients that serve any number of tasks at once. The pool opens at most
/// `max_connections + shared_clients` sockets.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PoolSettings {
    /// Exclusive connections kept open and warm \[10\] (`REDIS_POOL_SIZE`).
    pub pool_size: usize,
    /// Most exclusive connections open at once \[20\] (`REDIS_MAX_CONNECTIONS`); those above
    /// `pool_size` close after `idle_timeout` idle.
    pub max_connections: usize,
    /// Multiplexed clients shared round-robin by [`shared`](crate::RedisPool::shared) \[1\].
    /// One fred client drives its socket from one task; on 2 cores one client is fastest
    /// (measured: 2 clients halve throughput at 64+ tasks), more pay off on many cores.
    pub shared_clients: usize,
    /// TCP keepalive on every socket \[true\]: first probe after 60 s idle, then every 10 s.
    pub socket_keepalive: bool,
    /// Retry a command that timed out (after `shared_command_timeout`), once, on the next
    /// shared client in round-robin order \[false\] (the same client when `shared_clients` is
    /// 1, so a timeout can then cost twice the bound); only through
    /// [`idempotent`](crate::RedisPool::idempotent),
    /// which is for idempotent, non-blocking commands. Nothing else is ever retried: fred is
    /// told never to resend a command. Needs a `shared_command_timeout`.
    pub retry_on_timeout: bool,
    /// Ping an exclusive connection before handing it out if it sat idle longer than this, ping
    /// idle ones in the background, and ping the shared clients on this period \[30 s\].
    /// `None` turns all three off.
    ///
    /// Each shared client's heartbeat `PING` may take `shared_command_timeout` (the client's own
    /// command timeout; `command_timeout` when that is `None`), at most the period; a client
    /// that does not answer in time is told to reconnect, since its socket may be half-open.
    pub health_check_interval: Option<Duration>,
    /// How long one command on an exclusive connection may take before it fails with a
    /// timeout \[5 s\]; `None` waits forever. A blocking command that may block longer must say
    /// so (`conn.with_options(&Options { timeout: Some(..), ..Default::default() })`).
    pub command_timeout: Option<Duration>,
    /// How long one command on a shared client may take before it fails with a timeout
    /// \[5 s\]; `None` waits forever, as a bare fred client does.
    ///
    /// This bound is what fails a command written to a server that stopped answering (a
    /// stopped process, a long script) or queued while its client reconnects. fred arms a
    /// tokio timer for each bounded command, which costs the shared path a few percent of its
    /// throughput (`cargo xtask bench redis -- --no-shared-command-timeout` shows how much on
    /// your machine); without it, commands still fail at once when their socket closes.
    pub shared_command_timeout: Option<Duration>,
    /// How long one connect attempt (TCP, `HELLO`/`AUTH`, `SELECT`) may take \[5 s\].
    pub connect_timeout: Duration,
    /// How long an exclusive checkout may wait for a connection \[30 s\].
    pub pool_timeout: Duration,
    /// Exclusive connections above `pool_size` idle this long are closed \[60 s\].
    pub idle_timeout: Option<Duration>,
    /// Maximum lifetime of an exclusive connection, with a little negative jitter \[1 h\].
    pub pool_recycle: Option<Duration>,
    /// The longest delay between two reconnect attempts of a shared client \[2 s\]; delays
    /// grow exponentially from 50 ms with up to 50 ms of jitter until they reach it (fred adds
    /// none there). Exclusive connections do not reconnect: the pool replaces them, with the
    /// engine's backoff.
    pub max_reconnect_delay: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            pool_size: 10,
            max_connections: 20,
            shared_clients: 1,
            socket_keepalive: true,
            retry_on_timeout: false,
            health_check_interval: Some(Duration::from_secs(30)),
            command_timeout: Some(Duration::from_secs(5)),
            shared_command_timeout: Some(Duration::from_secs(5)),
            connect_timeout: Duration::from_secs(5),
            pool_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(60)),
            pool_recycle: Some(Duration::from_secs(3600)),
            max_reconnect_delay: Duration::from_secs(2),
        }
    }
}

macro_rules! setters {
    ($($field:ident: $ty:ty),* $(,)?) => {$(
        #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
        #[must_use]
        pub fn $field(mut self, value: $ty) -> Self {
            self.$field = value;
            self
        }
    )*};
}

impl PoolSettings {
    setters! {
        pool_size: usize,
        max_connections: usize,
        shared_clients: usize,
        socket_keepalive: bool,
        retry_on_timeout: bool,
        health_check_interval: Option<Duration>,
        command_timeout: Option<Duration>,
        shared_command_timeout: Option<Duration>,
        connect_timeout: Duration,
        pool_timeout: Duration,
        idle_timeout: Option<Duration>,
        pool_recycle: Option<Duration>,
        max_reconnect_delay: Duration,
    }

    /// Checks the settings of the pool `pool`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first setting that makes no sense.
    pub fn validate(&self, pool: &str) -> Result<(), ConfigError> {
        let invalid = |setting, value: String, reason| ConfigError::Invalid {
            pool: pool.to_owned(),
            setting,
            value,
            reason,
        };
        if self.pool_size == 0 {
            return Err(invalid("pool_size", "0".into(), "must be at least 1"));
        }
        if self.max_connections < self.pool_size {
            return Err(invalid(
                "max_connections",
                self.max_connections.to_string(),
                "must be at least pool_size",
            ));
        }
        if self.shared_clients == 0 {
            return Err(invalid("shared_clients", "0".into(), "must be at least 1"));
        }
        if self.retry_on_timeout && self.shared_command_timeout.is_none() {
            return Err(invalid(
                "retry_on_timeout",
                "true".into(),
                "needs a shared_command_timeout: without one no shared command times out",
            ));
        }
        let positive = [
            ("connect_timeout", Some(self.connect_timeout)),
            ("pool_timeout", Some(self.pool_timeout)),
            ("max_reconnect_delay", Some(self.max_reconnect_delay)),
            ("health_check_interval", self.health_check_interval),
            ("command_timeout", self.command_timeout),
            ("shared_command_timeout", self.shared_command_timeout),
            ("idle_timeout", self.idle_timeout),
            ("pool_recycle", self.pool_recycle),
        ];
        for (setting, value) in positive {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(invalid(setting, "0s".into(), "must be greater than zero"));
            }
        }
        if u32::try_from(self.max_reconnect_delay.as_millis()).is_err() {
            return Err(invalid(
                "max_reconnect_delay",
                format!("{:?}", self.max_reconnect_delay),
                "must be below 49 days",
            ));
        }
        Ok(())
    }

    /// The shared clients' heartbeat: its period and the bound on each `PING`, which is the
    /// shared clients' own command timeout (`shared_command_timeout`), else `command_timeout`,
    /// at most the period; `None` when health checks are off. The fallback keeps a half-open
    /// socket found as soon as before when the shared clients' own timeout is turned off.
    pub(crate) fn heartbeat(&self) -> Option<(Duration, Duration)> {
        let period = self.health_check_interval?;
        let bound = self.shared_command_timeout.or(self.command_timeout).unwrap_or(period);
        Some((period, bound.min(period)))
    }

    /// The engine's settings for the exclusive connections.
    pub(crate) fn engine_config(&self) -> pool_core::PoolConfig {
        let mut c = pool_core::PoolConfig::default();
        c.pool_size = self.pool_size;
        c.max_overflow = self.max_connections - self.pool_size;
        c.pool_timeout = self.pool_timeout;
        c.connect_timeout = self.connect_timeout;
        c.pool_recycle = self.pool_recycle;
        c.idle_timeout = self.idle_timeout;
        c.health_check_interval = self.health_check_interval;
        c.pool_pre_ping = self.health_check_interval.is_some();
        if let Some(interval) = self.health_check_interval {
            c.pre_ping_bypass = interval;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |var| pairs.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())
    }

    #[test]
    fn env_sets_url_and_sizes() {
        let c = RedisConfig::default()
            .with_env_from(env(&[
                ("REDIS_URL", "redis://10.0.0.1:6380/2"),
                ("REDIS_POOL_SIZE", "4"),
                ("REDIS_MAX_CONNECTIONS", "8"),
                ("REDIS_CACHE_POOL_SIZE", "64"),
            ]))
            .unwrap();
        assert_eq!(c.url, "redis://10.0.0.1:6380/2");
        assert_eq!((c.pools["main"].pool_size, c.pools["main"].max_connections), (4, 8));
        assert_eq!((c.pools["cache"].pool_size, c.pools["cache"].max_connections), (64, 64));
    }

    #[test]
    fn env_adds_main_when_missing() {
        let c =
            RedisConfig::new(DEFAULT_URL).with_env_from(env(&[("REDIS_POOL_SIZE", "3")])).unwrap();
        assert_eq!(c.pools["main"].pool_size, 3);
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        for (var, value) in [
            ("REDIS_POOL_SIZE", "ten"),
            ("REDIS_MAX_CONNECTIONS", "-1"),
            ("REDIS_CACHE_MAX_CONNECTIONS", "1e3"),
            ("REDIS_POOL_SIZE", "-0"),
        ] {
            let err = RedisConfig::default().with_env_from(env(&[(var, value)])).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(var) && msg.contains(value), "{msg}");
            assert!(msg.contains("expected a whole number such as 10"), "{msg}");
        }
        let c = RedisConfig::default().with_env_from(env(&[("REDIS_POOL_SIZE", " +5\n")]));
        assert_eq!(c.unwrap().pools["main"].pool_size, 5);
    }

    #[test]
    fn bad_url_is_an_error_naming_it_without_the_password() {
        let err = RedisConfig::default()
            .with_env_from(env(&[("REDIS_URL", "http://:hunter2@host:notaport")]))
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Url { .. }), "{msg}");
        assert!(msg.contains("invalid Redis URL") && !msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn invalid_settings_name_pool_and_setting() {
        for (settings, setting) in [
            (PoolSettings::default().pool_size(0), "pool_size"),
            (PoolSettings::default().pool_size(30), "max_connections"),
            (PoolSettings::default().shared_clients(0), "shared_clients"),
            (PoolSettings::default().command_timeout(Some(Duration::ZERO)), "command_timeout"),
            (
                PoolSettings::default().shared_command_timeout(Some(Duration::ZERO)),
                "shared_command_timeout",
            ),
            (
                PoolSettings::default().retry_on_timeout(true).shared_command_timeout(None),
                "retry_on_timeout",
            ),
        ] {
            let err = RedisConfig::new(DEFAULT_URL).pool("cache", settings).validate().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(setting) && msg.contains("\"cache\""), "{msg}");
        }
        assert!(matches!(RedisConfig::new(DEFAULT_URL).validate(), Err(ConfigError::NoPools)));
    }

    /// The heartbeat's `PING` is bounded like any command on a shared client: by
    /// `shared_command_timeout`, never by the exclusive connections' `command_timeout`.
    #[test]
    fn heartbeat_is_bounded_by_the_shared_command_timeout_and_the_period() {
        let secs = |s| Some(Duration::from_secs(s));
        let base = PoolSettings::default().health_check_interval(secs(30));
        for (command, shared, bound) in [
            (secs(1), secs(7), 7),
            (secs(5), secs(5), 5),
            (secs(5), None, 5),
            (None, None, 30),
            (secs(5), secs(60), 30),
            (None, secs(2), 2),
        ] {
            let s = base.clone().command_timeout(command).shared_command_timeout(shared);
            let expected = (Duration::from_secs(30), Duration::from_secs(bound));
            assert_eq!(s.heartbeat(), Some(expected), "{command:?} {shared:?}");
        }
        assert_eq!(base.health_check_interval(None).heartbeat(), None);
    }

    #[test]
    fn max_connections_maps_to_overflow() {
        let c = PoolSettings::default().pool_size(4).max_connections(10).engine_config();
        assert_eq!((c.pool_size, c.max_overflow), (4, 6));
        assert!(c.validate().is_ok());
    }
}
