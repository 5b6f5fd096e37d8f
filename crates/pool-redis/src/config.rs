//! [`RedisConfig`]: the server's URL and named pools, each with its [`PoolSettings`], read
//! from code and from the environment (`REDIS_URL`, and each pool's [`RedisConfig::POOL_ENV`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pool_core::{
    CredentialProvider, EnvError, EnvForm, EnvVar, FileCredentials, PoolConfig, Seconds,
};

use crate::error::{ConfigError, redact};
use crate::hook::{ConnectHook, OnConnect};
use crate::tls::TlsFiles;

/// The URL used when neither the code nor `REDIS_URL` gives one.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// The server and the named pools opened on it, e.g. a general `main` pool and a larger `cache`.
///
/// [`Default`] gives `redis://127.0.0.1:6379` with `main` (10 kept, at most 30) and `cache`
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
/// assert_eq!(config.pools["cache"].max_size(), 64);
/// ```
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server's URL: `redis://[user:password@]host[:port][/db]`, `rediss://` for TLS (see
    /// [`PoolSettings::tls_ca_cert`]), or `redis+unix:///path/to/redis.sock[?db=N]` for a Unix
    /// socket (with a password, a host must be named and is ignored:
    /// `redis+unix://:password@localhost/path/to/redis.sock`).
    ///
    /// Behind Redis Sentinel: `redis-sentinel://[user:password@]host[:port][/db]?sentinelServiceName=NAME[&node=host:port]...`,
    /// naming every sentinel (port 26379 by default; `user:password` are the master's, the
    /// sentinels' own are `sentinelUsername`/`sentinelPassword`); each connection asks a
    /// sentinel for the master, checks its `ROLE`, and every reconnect asks again, so the pool
    /// follows a failover. A Redis Cluster: `redis-cluster://[user:password@]host:port[?node=host:port]...`,
    /// naming one node or more; commands go to the node that owns their key's slot and follow
    /// `MOVED`/`ASK` redirections and the cluster's new layout after a failover. Neither takes
    /// TLS yet.
    pub url: String,
    /// The pools, by name.
    pub pools: BTreeMap<String, PoolSettings>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("pools", &self.pools)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig::new(DEFAULT_URL)
            .pool("main", PoolSettings::default())
            .pool("cache", PoolSettings::default().pool_size(20).max_overflow(30))
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

    /// The variables of one pool and the key each sets: the one list that
    /// [`with_env_from`](Self::with_env_from) and pool-admin read, unprefixed for the pool
    /// `main` (`REDIS_POOL_SIZE`) and prefixed with the pool's name for any pool
    /// (`REDIS_CACHE_POOL_SIZE`: `REDIS_`, the name upper-cased with `-` as `_`, then `_`).
    pub const POOL_ENV: &'static [EnvVar<PoolSettings>] = &[
        EnvVar {
            name: "MAX_CONNECTIONS",
            key: "max_connections",
            form: EnvForm::Count,
            set: |s, v| {
                s.max_connections = Some(v.count()?);
                Ok(())
            },
        },
        EnvVar {
            name: "COMMAND_TIMEOUT",
            key: "command_timeout",
            form: EnvForm::Seconds(Seconds::ZeroIsOff),
            set: |s, v| {
                s.command_timeout = v.duration(Seconds::ZeroIsOff)?;
                Ok(())
            },
        },
        EnvVar {
            name: "SHARED_COMMAND_TIMEOUT",
            key: "shared_command_timeout",
            form: EnvForm::Seconds(Seconds::ZeroIsOff),
            set: |s, v| {
                s.shared_command_timeout = v.duration(Seconds::ZeroIsOff)?;
                Ok(())
            },
        },
        EnvVar {
            name: "TCP_USER_TIMEOUT",
            key: "tcp_user_timeout",
            form: EnvForm::Seconds(Seconds::ZeroIsOff),
            set: |s, v| {
                s.tcp_user_timeout = v.duration(Seconds::ZeroIsOff)?;
                Ok(())
            },
        },
        EnvVar {
            name: "TLS_CA_CERT",
            key: "tls_ca_cert",
            form: EnvForm::Text,
            set: |s, v| {
                s.tls_ca_cert = Some(v.text()?.into());
                Ok(())
            },
        },
        EnvVar {
            name: "TLS_CERT",
            key: "tls_cert",
            form: EnvForm::Text,
            set: |s, v| {
                s.tls_cert = Some(v.text()?.into());
                Ok(())
            },
        },
        EnvVar {
            name: "TLS_KEY",
            key: "tls_key",
            form: EnvForm::Text,
            set: |s, v| {
                s.tls_key = Some(v.text()?.into());
                Ok(())
            },
        },
        EnvVar {
            name: "PASSWORD_FILE",
            key: "password_file",
            form: EnvForm::Text,
            set: |s, v| {
                s.password_file = Some(v.text()?.into());
                Ok(())
            },
        },
    ];

    /// Every variable of a pool under `prefix` (`REDIS_` for `main`, or
    /// [`env_prefix`](Self::env_prefix)), `(variable, key, form)`: the engine's
    /// ([`PoolConfig::ENV`]: `POOL_SIZE`, `POOL_OVERFLOW`, `POOL_TIMEOUT`, `POOL_RECYCLE`), then
    /// [`POOL_ENV`](Self::POOL_ENV)'s (`MAX_CONNECTIONS`, `COMMAND_TIMEOUT`,
    /// `SHARED_COMMAND_TIMEOUT`, `TCP_USER_TIMEOUT`, `TLS_CA_CERT`, `TLS_CERT`, `TLS_KEY`,
    /// `PASSWORD_FILE`).
    pub fn pool_env_vars(prefix: &str) -> impl Iterator<Item = (String, &'static str, EnvForm)> {
        let engine = PoolConfig::ENV.iter().map(|v| (v.name, v.key, v.form));
        let own = Self::POOL_ENV.iter().map(|v| (v.name, v.key, v.form));
        engine.chain(own).map(move |(name, key, form)| (format!("{prefix}{name}"), key, form))
    }

    /// Applies the variables of one pool under `prefix` to `settings`.
    fn apply_pool_env(
        settings: &mut PoolSettings,
        prefix: &str,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), EnvError> {
        pool_core::apply_env(&mut settings.pool, PoolConfig::ENV, prefix, lookup)?;
        pool_core::apply_env(settings, Self::POOL_ENV, prefix, lookup)
    }

    /// The prefix of the pool `name`'s variables: `REDIS_CACHE_` for `cache`.
    pub fn env_prefix(name: &str) -> String {
        format!("REDIS_{}_", name.to_uppercase().replace('-', "_"))
    }

    /// The [default](Self::default) configuration with the process environment applied
    /// (see [`with_env_from`](Self::with_env_from)).
    ///
    /// # Errors
    ///
    /// As for [`with_env_from`](Self::with_env_from).
    pub fn from_env() -> Result<Self, ConfigError> {
        RedisConfig::default().with_env_from(|var| std::env::var(var).ok())
    }

    /// Applies environment variables read through `lookup`, then validates:
    ///
    /// - `REDIS_URL`: the server's URL;
    /// - `REDIS_POOL_SIZE`, `REDIS_POOL_OVERFLOW`, `REDIS_POOL_TIMEOUT`, `REDIS_POOL_RECYCLE`,
    ///   `REDIS_MAX_CONNECTIONS`, `REDIS_COMMAND_TIMEOUT`, `REDIS_SHARED_COMMAND_TIMEOUT`,
    ///   `REDIS_TCP_USER_TIMEOUT` (seconds, 0 or less: off), `REDIS_TLS_CA_CERT`,
    ///   `REDIS_TLS_CERT`, `REDIS_TLS_KEY` and `REDIS_PASSWORD_FILE`: the `main` pool's (the pool is added if missing), as
    ///   [`pool_env_vars`](Self::pool_env_vars) lists them;
    /// - the same prefixed with a pool's name set that pool's, e.g. `REDIS_CACHE_POOL_SIZE`;
    ///   for `main` they win over the unprefixed ones.
    ///
    /// `REDIS_POOL_SIZE` alone keeps `max_overflow`, so the pool may open that many more under
    /// load; `REDIS_MAX_CONNECTIONS` is the total, `pool_size + max_overflow`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Env`] naming the variable whose value does not parse, or whose setting
    /// is refused, and any other error of [`validate`](Self::validate).
    pub fn with_env_from(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        if let Some(url) = lookup("REDIS_URL") {
            self.url = url;
        }
        let unprefixed = Self::pool_env_vars("REDIS_").any(|(var, _, _)| lookup(&var).is_some());
        if unprefixed && !self.pools.contains_key("main") {
            self.pools.insert("main".to_owned(), PoolSettings::default());
        }
        for (name, settings) in &mut self.pools {
            if name == "main" {
                Self::apply_pool_env(settings, "REDIS_", &lookup)?;
            }
            Self::apply_pool_env(settings, &Self::env_prefix(name), &lookup)?;
            // A value that parses but that the pool refuses is still its variable's fault.
            if let Err(ConfigError::Invalid { setting, reason, .. }) = settings.validate(name) {
                // For `main`, its own variables before the unprefixed ones.
                let unprefixed = (name == "main").then(|| Self::pool_env_vars("REDIS_"));
                let prefix = Self::env_prefix(name);
                let vars = Self::pool_env_vars(&prefix)
                    .chain(unprefixed.into_iter().flatten())
                    .map(|(var, key, _)| (var, key));
                if let Some(e) = EnvError::blaming(vars, &setting, &reason, &lookup) {
                    return Err(e.into());
                }
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks the URL and every pool's settings, alone ([`PoolSettings::validate`]) and with the
    /// URL: TLS settings need a `rediss://` URL, and a pool's password comes from one place
    /// only (the URL, `password_file` or a credential provider).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Url`] when the URL does not parse, [`ConfigError::NoPools`] when no pool
    /// is named, [`ConfigError::Invalid`] naming the pool and setting that makes no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fred = self.fred_config()?;
        if self.pools.is_empty() {
            return Err(ConfigError::NoPools);
        }
        let tls = self.url.starts_with("rediss://");
        for (name, settings) in &self.pools {
            settings.validate(name)?;
            let invalid = |setting: &str, value: String, reason: &str| ConfigError::Invalid {
                pool: name.clone(),
                setting: setting.to_owned(),
                value,
                reason: reason.to_owned(),
            };
            let files = [
                ("tls_ca_cert", &settings.tls_ca_cert),
                ("tls_cert", &settings.tls_cert),
                ("tls_key", &settings.tls_key),
            ];
            for (setting, path) in files {
                if let Some(path) = path.as_ref().filter(|_| !tls) {
                    return Err(invalid(
                        setting,
                        path.display().to_string(),
                        "needs a rediss:// URL: the URL connects without TLS",
                    ));
                }
            }
            if fred.password.is_some() {
                let other = match (&settings.password_file, &settings.credentials) {
                    (Some(path), _) => Some(("password_file", path.display().to_string())),
                    (None, Some(provider)) => Some(("credentials", format!("{provider:?}"))),
                    (None, None) => None,
                };
                if let Some((setting, value)) = other {
                    return Err(invalid(
                        setting,
                        value,
                        "the URL has a password too: give the password in one place",
                    ));
                }
            }
        }
        Ok(())
    }

    /// fred's client configuration for the URL, without TLS: a `rediss://` URL is read as
    /// `redis://` (fred would load the system's certificates for its own TLS configuration on
    /// every call), and the pool sets its own TLS configuration when it connects.
    pub(crate) fn fred_config(&self) -> Result<fred::types::config::Config, ConfigError> {
        use fred::error::{Error, ErrorKind};
        let invalid = |source| ConfigError::Url { url: redact(&self.url), source };
        let url_error = |words: String| invalid(Error::new(ErrorKind::Url, words));
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("", ""));
        if matches!(scheme, "rediss-sentinel" | "rediss-cluster") {
            return Err(url_error(format!(
                "{scheme}:// is not supported: Sentinel and Cluster pools connect without TLS"
            )));
        }
        if !matches!(scheme, "redis" | "rediss" | "redis+unix" | "redis-sentinel" | "redis-cluster")
        {
            return Err(url_error(
                "expected redis://[user:password@]host[:port][/db], rediss://... for TLS, \
                 redis+unix:///path/to/redis.sock[?db=N], \
                 redis-sentinel://host[:port][/db]?sentinelServiceName=NAME[&node=host:port]... \
                 or redis-cluster://host:port[?node=host:port]..."
                    .to_owned(),
            ));
        }
        // fred parses with the `url` crate but keeps only the kind of failure ("InvalidPort"):
        // the same parser first, for its own words ("invalid port number").
        let parsed = url::Url::parse(&self.url).map_err(|e| url_error(e.to_string()))?;
        if scheme == "redis+unix" {
            return unix_config(&self.url, &parsed).map_err(invalid);
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(url_error("the URL names no host".to_owned()));
        }
        match scheme {
            "redis-sentinel" => {
                if !parsed.query_pairs().any(|(k, v)| k == "sentinelServiceName" && !v.is_empty()) {
                    return Err(url_error(
                        "a redis-sentinel URL names its master with ?sentinelServiceName=NAME"
                            .to_owned(),
                    ));
                }
                fred::types::config::Config::from_url_sentinel(&self.url).map_err(invalid)
            }
            "redis-cluster" => {
                fred::types::config::Config::from_url_clustered(&self.url).map_err(invalid)
            }
            _ => fred::types::config::Config::from_url_centralized(&format!("redis://{rest}"))
                .map_err(invalid),
        }
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub(crate) fn uses_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }
}

/// fred's configuration of a `redis+unix://` URL: the socket's path, the URL's user and password,
/// and the database of its `db` query parameter (the path cannot hold one).
fn unix_config(
    url: &str,
    parsed: &url::Url,
) -> Result<fred::types::config::Config, fred::error::Error> {
    use fred::error::{Error, ErrorKind};
    if parsed.path().is_empty() || parsed.path() == "/" {
        return Err(Error::new(ErrorKind::Url, "expected redis+unix:///path/to/redis.sock"));
    }
    let mut config = fred::types::config::Config::from_url_unix(url)?;
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "db" => {
                let db = value.parse::<u8>().map_err(|_| {
                    Error::new(
                        ErrorKind::Url,
                        format!("db={value} is not a database number (0-255)"),
                    )
                })?;
                config.database = Some(db);
            }
            other => {
                return Err(Error::new(
                    ErrorKind::Url,
                    format!("unknown parameter {other:?}: a redis+unix URL takes only db"),
                ));
            }
        }
    }
    Ok(config)
}

/// The settings of one named pool: the engine's [`PoolConfig`] for the exclusive connections,
/// and the shared clients' own.
///
/// Each pool has exclusive connections, checked out one user at a time through the engine
/// (`pool.pool_size` kept, up to `pool_size + max_overflow` open), and `shared_clients`
/// multiplexed clients that serve any number of tasks at once. The pool opens at most
/// `pool_size + max_overflow + shared_clients` sockets. With the `serde` feature it reads and
/// writes a configuration file's table, the engine's keys beside these, durations as seconds.
///
/// [`Default`] is [`PoolConfig::default`]'s sizes (10 kept, 20 more under load) and the defaults
/// below.
#[derive(Debug, Clone)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct PoolSettings {
    /// The engine's settings for the exclusive connections (`REDIS_POOL_SIZE`,
    /// `REDIS_POOL_OVERFLOW`). `health_check_interval` is also the period of the shared clients'
    /// heartbeat, and `connect_timeout` bounds every connect, shared clients' included.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub pool: PoolConfig,
    /// The most exclusive connections open at once, as configurations written for `redis-py`
    /// say it (`REDIS_MAX_CONNECTIONS`): when set, it is `pool_size + max_overflow` and sets
    /// `max_overflow` to `max_connections - pool_size`; it must be at least `pool_size` \[unset\].
    pub max_connections: Option<usize>,
    /// Multiplexed clients shared round-robin by [`shared`](crate::RedisPool::shared) \[1\].
    /// One fred client drives its socket from one task; on 2 cores one client is fastest
    /// (measured: 2 clients halve throughput at 64+ tasks), more pay off on many cores.
    pub shared_clients: usize,
    /// TCP keepalive on every socket \[true\]: first probe after 60 s idle, then every 10 s.
    pub socket_keepalive: bool,
    /// `TCP_USER_TIMEOUT` of every TCP socket (Linux only; elsewhere ignored)
    /// (`REDIS_TCP_USER_TIMEOUT`) \[20 s\]: the kernel closes a connection whose sent data
    /// stays unacknowledged this long, and one whose keepalive probes go unanswered this long.
    /// This is what ends a connection to a server gone silent on the network (a failover to
    /// another address, a partition, a lost VM) in seconds instead of TCP's ~15 minutes of
    /// retransmissions; a stopped but reachable process is found by the command timeouts
    /// instead. `None` (0 in a file) keeps the system's default.
    #[cfg_attr(feature = "serde", serde(with = "pool_core::seconds::zero_is_off"))]
    pub tcp_user_timeout: Option<Duration>,
    /// Retry a command that timed out (after `shared_command_timeout`), once, on the next
    /// shared client in round-robin order \[false\] (the same client when `shared_clients` is
    /// 1, so a timeout can then cost twice the bound); only through
    /// [`idempotent`](crate::RedisPool::idempotent),
    /// which is for idempotent, non-blocking commands. Nothing else is ever retried: fred is
    /// told never to resend a command. Needs a `shared_command_timeout`.
    pub retry_on_timeout: bool,
    /// How long one command on an exclusive connection may take before it fails with a
    /// timeout (`REDIS_COMMAND_TIMEOUT`) \[5 s\]; `None` (0 in a file) waits forever. A
    /// blocking command that may block longer must say so
    /// (`conn.with_options(&Options { timeout: Some(..), ..Default::default() })`).
    ///
    /// It also bounds the connection: once a reply is overdue by this long and a quarter more
    /// (a second more at most), fred closes the socket, so a connection whose server stopped
    /// answering is broken from then on and never handed out again, whatever the command's own
    /// timeout; its return's reset, queued behind the overdue reply, fails by then. Blocking commands are exempt (`BLPOP`, `WAIT`, `XREAD BLOCK`,
    /// and `custom` commands built as blocking): a slow command that is not blocking (a long
    /// script) needs a `custom` command marked blocking, or no `command_timeout`.
    #[cfg_attr(feature = "serde", serde(with = "pool_core::seconds::zero_is_off"))]
    pub command_timeout: Option<Duration>,
    /// How long one command on a shared client may take before it fails with a timeout
    /// (`REDIS_SHARED_COMMAND_TIMEOUT`) \[5 s\]; `None` (0 in a file) waits forever, as a bare
    /// fred client does. A shared client whose reply is overdue by this long while no command
    /// was written for as long is reconnected by fred (as `command_timeout` says for exclusive
    /// connections); under steady traffic the heartbeat finds it instead.
    ///
    /// This bound is what fails a command written to a server that stopped answering (a
    /// stopped process, a long script) or queued while its client reconnects. fred arms a
    /// tokio timer for each bounded command, which costs the shared path a few percent of its
    /// throughput (`cargo xtask bench redis -- --no-shared-command-timeout` shows how much on
    /// your machine); without it, commands still fail at once when their socket closes.
    ///
    /// Each shared client's heartbeat `PING` (every `health_check_interval`) may take this long
    /// (`command_timeout` when this is `None`), at most the period; a client that does not
    /// answer in time is told to reconnect, since its socket may be half-open.
    #[cfg_attr(feature = "serde", serde(with = "pool_core::seconds::zero_is_off"))]
    pub shared_command_timeout: Option<Duration>,
    /// The longest delay between two reconnect attempts of a shared client \[2 s\]; delays
    /// grow exponentially from 50 ms with up to 50 ms of jitter until they reach it (fred adds
    /// none there). Exclusive connections do not reconnect: the pool replaces them, with the
    /// engine's backoff.
    #[cfg_attr(feature = "serde", serde(with = "pool_core::seconds::positive"))]
    pub max_reconnect_delay: Duration,
    /// A PEM file of the CA certificates that sign the server's certificate, the only ones
    /// trusted (`REDIS_TLS_CA_CERT`) \[unset: the system's CA certificates\]: a private CA, or a
    /// managed service's bundle. TLS settings need a `rediss://` URL; every connection of the
    /// pool, exclusive and shared, then checks the server's certificate and that it is valid for
    /// the URL's host name (always: there is no setting that turns the checks off).
    pub tls_ca_cert: Option<PathBuf>,
    /// A PEM file of the client certificate (and its chain) presented to a server that
    /// authenticates clients by certificate (`tls-auth-clients yes`), with
    /// [`tls_key`](Self::tls_key) (`REDIS_TLS_CERT`) \[unset\].
    pub tls_cert: Option<PathBuf>,
    /// A PEM file of the client certificate's private key (`REDIS_TLS_KEY`) \[unset\].
    pub tls_key: Option<PathBuf>,
    /// A file holding the password, in place of the URL's (which must then have none), read on
    /// every new connection and reconnect, and again whenever it changes
    /// ([`FileCredentials`]: how Vault agent and Kubernetes secrets rotate passwords;
    /// `REDIS_PASSWORD_FILE`) \[unset\]. Line breaks at its end are dropped. The URL's user name,
    /// if any, logs in with it.
    pub password_file: Option<PathBuf>,
    /// Commands run on every new connection, as `redis-cli` reads a line
    /// (`["CLIENT SETNAME billing"]`), in one round trip, before anyone uses it \[none\]: on each
    /// exclusive connection when it opens and again after each reset on return (in the reset's
    /// round trip, since its `RESET` undoes them), and on each shared client when it connects and
    /// after every reconnect. A command that fails makes the connect fail with its error.
    /// Refused: `AUTH` and `SELECT` (the URL's), and commands that would leave fred's replies
    /// out of step or block (`SUBSCRIBE`, `MONITOR`, `HELLO`, `CLIENT REPLY`, `MULTI`, `BLPOP`...).
    /// Not read from the environment.
    pub connect_commands: Vec<String>,
    /// Where the password or token of every new connection comes from, in place of the URL's
    /// password, set in code \[unset\]: asked by every connect and reconnect (fred's, for the
    /// shared clients) and by every reset on return, whose `RESET` logs the connection out so
    /// it sends `AUTH` again with the provider's current credential. Wrap a slow source in
    /// [`CachedCredentials`](pool_core::CachedCredentials), which also suits tokens that expire
    /// (the cloud's IAM tokens). `password_file` makes a [`FileCredentials`].
    #[cfg_attr(feature = "serde", serde(skip))]
    pub credentials: Option<Arc<dyn CredentialProvider>>,
    /// An async function run after `connect_commands` wherever they run, set in code with
    /// [`on_connect`](Self::on_connect) \[unset\]; see [`ConnectHook`].
    #[cfg_attr(feature = "serde", serde(skip))]
    pub on_connect: Option<ConnectHook>,
}

/// Equal when every setting is, a provider being equal only to itself (clones of one `Arc`).
impl PartialEq for PoolSettings {
    fn eq(&self, other: &Self) -> bool {
        // Taken apart, so that a new field cannot be left out of the comparison.
        let PoolSettings {
            pool,
            max_connections,
            shared_clients,
            socket_keepalive,
            tcp_user_timeout,
            retry_on_timeout,
            command_timeout,
            shared_command_timeout,
            max_reconnect_delay,
            tls_ca_cert,
            tls_cert,
            tls_key,
            password_file,
            connect_commands,
            credentials,
            on_connect,
        } = self;
        let same_provider = match (credentials, &other.credentials) {
            (None, None) => true,
            (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
            _ => false,
        };
        *pool == other.pool
            && *max_connections == other.max_connections
            && *shared_clients == other.shared_clients
            && *socket_keepalive == other.socket_keepalive
            && *tcp_user_timeout == other.tcp_user_timeout
            && *retry_on_timeout == other.retry_on_timeout
            && *command_timeout == other.command_timeout
            && *shared_command_timeout == other.shared_command_timeout
            && *max_reconnect_delay == other.max_reconnect_delay
            && *tls_ca_cert == other.tls_ca_cert
            && *tls_cert == other.tls_cert
            && *tls_key == other.tls_key
            && *password_file == other.password_file
            && *connect_commands == other.connect_commands
            && same_provider
            && *on_connect == other.on_connect
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            pool: PoolConfig::default(),
            max_connections: None,
            shared_clients: 1,
            socket_keepalive: true,
            tcp_user_timeout: Some(DEFAULT_TCP_USER_TIMEOUT),
            retry_on_timeout: false,
            command_timeout: Some(Duration::from_secs(5)),
            shared_command_timeout: Some(Duration::from_secs(5)),
            max_reconnect_delay: Duration::from_secs(2),
            tls_ca_cert: None,
            tls_cert: None,
            tls_key: None,
            password_file: None,
            connect_commands: Vec::new(),
            credentials: None,
            on_connect: None,
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
        shared_clients: usize,
        socket_keepalive: bool,
        tcp_user_timeout: Option<Duration>,
        retry_on_timeout: bool,
        command_timeout: Option<Duration>,
        shared_command_timeout: Option<Duration>,
        max_reconnect_delay: Duration,
    }

    /// Sets [`tls_ca_cert`](Self::tls_ca_cert), the CA certificates trusted for `rediss://`.
    #[must_use]
    pub fn tls_ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_cert = Some(path.into());
        self
    }

    /// Sets [`tls_cert`](Self::tls_cert) and [`tls_key`](Self::tls_key), the client
    /// certificate and its private key.
    #[must_use]
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_cert = Some(cert.into());
        self.tls_key = Some(key.into());
        self
    }

    /// Sets [`password_file`](Self::password_file), a file holding the password.
    #[must_use]
    pub fn password_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.password_file = Some(path.into());
        self
    }

    /// Sets [`connect_commands`](Self::connect_commands), run on every new connection.
    #[must_use]
    pub fn connect_commands<I, S>(mut self, commands: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.connect_commands = commands.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`credentials`](Self::credentials), where every new connection's password or
    /// token comes from.
    ///
    /// # Examples
    ///
    /// A token that expires after 15 minutes, fetched from a token service (the shape of
    /// ElastiCache's IAM authentication) and kept until a minute before it expires:
    ///
    /// ```
    /// use std::time::Duration;
    /// use pool_redis::pool_core::{CachedCredentials, Credential, CredentialError, FnCredentials};
    /// use pool_redis::PoolSettings;
    ///
    /// async fn fetch_token() -> Result<String, std::io::Error> {
    ///     Ok("token".to_owned()) // a signed request, a call to the cloud's token service
    /// }
    ///
    /// let tokens = CachedCredentials::new(FnCredentials::new(|| async {
    ///     let token = fetch_token().await.map_err(CredentialError::provider)?;
    ///     Ok(Credential::expiring_in(token, Duration::from_secs(900)))
    /// }));
    /// let settings = PoolSettings::default().credentials(tokens);
    /// ```
    #[must_use]
    pub fn credentials(mut self, provider: impl CredentialProvider) -> Self {
        self.credentials = Some(Arc::new(provider));
        self
    }

    /// Sets [`on_connect`](Self::on_connect): `f` runs with the client of every new connection,
    /// before anyone uses it, and again where [`ConnectHook`] says.
    #[must_use]
    pub fn on_connect<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(fred::clients::Client) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), fred::error::Error>> + Send + 'static,
    {
        self.on_connect = Some(ConnectHook::new(f));
        self
    }

    /// The TLS settings' files.
    pub(crate) fn tls_files(&self) -> TlsFiles<'_> {
        TlsFiles {
            ca: self.tls_ca_cert.as_deref(),
            cert: self.tls_cert.as_deref(),
            key: self.tls_key.as_deref(),
        }
    }

    /// The provider of the pool's passwords: [`credentials`](Self::credentials), or a
    /// [`FileCredentials`] of [`password_file`](Self::password_file).
    pub(crate) fn provider(&self) -> Option<Arc<dyn CredentialProvider>> {
        self.credentials.clone().or_else(|| {
            self.password_file
                .as_ref()
                .map(|path| Arc::new(FileCredentials::new(path)) as Arc<dyn CredentialProvider>)
        })
    }

    /// What runs on every new connection.
    pub(crate) fn on_connect_steps(&self) -> OnConnect {
        // Checked by `validate`.
        OnConnect::new(&self.connect_commands, self.on_connect.clone()).unwrap_or_default()
    }

    /// Sets the engine's settings for the exclusive connections, [`pool`](Self::pool).
    #[must_use]
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        self
    }

    /// Sets `pool.pool_size`, the exclusive connections kept open and warm.
    #[must_use]
    pub fn pool_size(mut self, pool_size: usize) -> Self {
        self.pool.pool_size = pool_size;
        self
    }

    /// Sets `pool.max_overflow`, the exclusive connections opened under load beyond
    /// `pool_size` (and clears [`max_connections`](Self::max_connections)).
    #[must_use]
    pub fn max_overflow(mut self, max_overflow: usize) -> Self {
        self.pool.max_overflow = max_overflow;
        self.max_connections = None;
        self
    }

    /// Sets [`max_connections`](Self::max_connections), the most exclusive connections open
    /// at once.
    #[must_use]
    pub fn max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = Some(max_connections);
        self
    }

    /// Checks the settings of the pool `pool`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first setting that makes no sense: the engine's own
    /// checks of [`pool`](Self::pool) (a zero `pool_size`...), then this type's, among them the
    /// files (a TLS file that cannot be read or holds no PEM of its kind, a key that does not
    /// match its certificate, a password file that cannot be read or is empty, each named with
    /// its path) and `connect_commands`.
    pub fn validate(&self, pool: &str) -> Result<(), ConfigError> {
        let invalid = |setting: &str, value: String, reason: &str| ConfigError::Invalid {
            pool: pool.to_owned(),
            setting: setting.to_owned(),
            value,
            reason: reason.to_owned(),
        };
        if let Some(max) = self.max_connections {
            if max < self.pool.pool_size {
                let reason = format!("must be at least pool_size ({})", self.pool.pool_size);
                return Err(invalid("max_connections", max.to_string(), &reason));
            }
            if max > MAX_CONNECTIONS {
                return Err(invalid("max_connections", max.to_string(), "must be at most 100000"));
            }
        }
        if let Err(pool_core::BuildError::Invalid { setting, value, reason }) =
            self.engine_config().validate()
        {
            return Err(invalid(setting, value, &reason));
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
            ("max_reconnect_delay", Some(self.max_reconnect_delay)),
            ("command_timeout", self.command_timeout),
            ("shared_command_timeout", self.shared_command_timeout),
            ("tcp_user_timeout", self.tcp_user_timeout),
        ];
        for (setting, value) in positive {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(invalid(setting, "0s".into(), "must be greater than zero"));
            }
        }
        // Both are milliseconds in a `u32` (fred's delays, the socket option).
        let millis = [
            ("max_reconnect_delay", Some(self.max_reconnect_delay)),
            ("tcp_user_timeout", self.tcp_user_timeout),
        ];
        for (setting, value) in millis {
            if let Some(d) = value.filter(|d| u32::try_from(d.as_millis()).is_err()) {
                return Err(invalid(setting, format!("{d:?}"), "must be below 49 days"));
            }
        }
        if let Err(p) = self.tls_files().check() {
            return Err(invalid(p.setting, p.path.display().to_string(), &p.reason));
        }
        if let Some(path) = &self.password_file {
            if self.credentials.is_some() {
                return Err(invalid(
                    "password_file",
                    path.display().to_string(),
                    "the pool has a credential provider too: give the password in one place",
                ));
            }
            if let Err(e) = FileCredentials::new(path).read() {
                return Err(invalid("password_file", path.display().to_string(), &e.to_string()));
            }
        }
        if let Err((i, reason)) = OnConnect::new(&self.connect_commands, None) {
            return Err(invalid(
                &format!("connect_commands[{i}]"),
                crate::hook::shown(&self.connect_commands[i]),
                &reason,
            ));
        }
        Ok(())
    }

    /// The shared clients' heartbeat: its period and the bound on each `PING`, which is the
    /// shared clients' own command timeout (`shared_command_timeout`), else `command_timeout`,
    /// at most the period; `None` when health checks are off. The fallback keeps a half-open
    /// socket found as soon as before when the shared clients' own timeout is turned off.
    pub(crate) fn heartbeat(&self) -> Option<(Duration, Duration)> {
        let period = self.pool.health_check_interval?;
        let bound = self.shared_command_timeout.or(self.command_timeout).unwrap_or(period);
        Some((period, bound.min(period)))
    }

    /// The engine's settings for the exclusive connections: [`pool`](Self::pool), with
    /// `max_overflow` from `max_connections` when that is set.
    pub fn engine_config(&self) -> PoolConfig {
        let mut c = self.pool.clone();
        if let Some(max) = self.max_connections {
            c.max_overflow = max.saturating_sub(c.pool_size);
        }
        c
    }

    /// The most exclusive connections open at once: `pool_size + max_overflow`.
    pub fn max_size(&self) -> usize {
        self.engine_config().max_size()
    }
}

/// The most exclusive connections a pool may open, pool-core's limit.
const MAX_CONNECTIONS: usize = 100_000;

/// [`PoolSettings::tcp_user_timeout`]'s default: longer than any retransmission a healthy
/// network needs, far shorter than TCP's own ~15 minutes.
const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |var| pairs.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())
    }

    fn sizes(s: &PoolSettings) -> (usize, usize) {
        let c = s.engine_config();
        (c.pool_size, c.max_overflow)
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
        assert_eq!(sizes(&c.pools["main"]), (4, 4));
        assert_eq!(sizes(&c.pools["cache"]), (64, 30));
        // A total below the size is the total's fault when both are set.
        let err = RedisConfig::default()
            .with_env_from(env(&[("REDIS_POOL_SIZE", "30"), ("REDIS_MAX_CONNECTIONS", "20")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("REDIS_MAX_CONNECTIONS") && err.contains("at least pool_size"),
            "{err}"
        );
        let err = RedisConfig::default()
            .with_env_from(env(&[("REDIS_CACHE_MAX_CONNECTIONS", "100001")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("REDIS_CACHE_MAX_CONNECTIONS"), "{err}");
    }

    /// `REDIS_POOL_SIZE` alone keeps the overflow, as `DATABASE_POOL_SIZE` does; the engine's
    /// variables are pool-core's, read under the pool's prefix.
    #[test]
    fn a_pool_size_alone_keeps_the_overflow() {
        let c = RedisConfig::default().with_env_from(env(&[("REDIS_POOL_SIZE", "64")])).unwrap();
        assert_eq!(sizes(&c.pools["main"]), (64, 20));
        let c = RedisConfig::default()
            .with_env_from(env(&[
                ("REDIS_POOL_OVERFLOW", "2"),
                ("REDIS_CACHE_POOL_TIMEOUT", "2.5"),
                ("REDIS_CACHE_POOL_RECYCLE", "-1"),
            ]))
            .unwrap();
        assert_eq!(sizes(&c.pools["main"]), (10, 2));
        assert_eq!(c.pools["cache"].pool.pool_timeout, Duration::from_millis(2500));
        assert_eq!(c.pools["cache"].pool.pool_recycle, None);
        let err = RedisConfig::default()
            .with_env_from(env(&[("REDIS_CACHE_POOL_TIMEOUT", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("REDIS_CACHE_POOL_TIMEOUT") && err.contains("greater than zero"),
            "{err}"
        );
    }

    #[test]
    fn env_adds_main_when_missing() {
        let c =
            RedisConfig::new(DEFAULT_URL).with_env_from(env(&[("REDIS_POOL_SIZE", "3")])).unwrap();
        assert_eq!(c.pools["main"].pool.pool_size, 3);
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
        assert_eq!(c.unwrap().pools["main"].pool.pool_size, 5);
        let err = RedisConfig::default().with_env_from(env(&[("REDIS_POOL_SIZE", "0")]));
        assert!(err.unwrap_err().to_string().contains("REDIS_POOL_SIZE"));
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

    /// A directory of its own for one test's files, removed at the end of the test.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("pool-redis-config-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, name: &str, text: &str) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn tls_and_password_variables_set_their_keys_and_bad_files_name_the_key() {
        let dir = TempDir::new("env");
        let password = dir.file("password", "s3cret\n");
        let not_pem = dir.file("not.pem", "hello");
        let missing = dir.0.join("missing.pem").display().to_string();
        let c = RedisConfig::default()
            .with_env_from(env(&[
                ("REDIS_URL", "rediss://cache.example:6380"),
                ("REDIS_PASSWORD_FILE", &password),
                ("REDIS_CACHE_PASSWORD_FILE", &password),
            ]))
            .unwrap();
        assert_eq!(c.pools["main"].password_file.as_deref(), Some(std::path::Path::new(&password)));
        assert!(c.pools["cache"].password_file.is_some());
        for (var, value, says) in [
            ("REDIS_TLS_CA_CERT", missing.as_str(), "cannot read it"),
            ("REDIS_TLS_CA_CERT", not_pem.as_str(), "holds no PEM certificate"),
            ("REDIS_CACHE_TLS_KEY", not_pem.as_str(), "set tls_cert too"),
            ("REDIS_PASSWORD_FILE", missing.as_str(), "cannot read the password file"),
        ] {
            let err = RedisConfig::default()
                .with_env_from(env(&[("REDIS_URL", "rediss://h"), (var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(var) && err.contains(value) && err.contains(says), "{err}");
        }
        let empty = dir.file("empty", "\n");
        let err = RedisConfig::default()
            .with_env_from(env(&[("REDIS_PASSWORD_FILE", &empty)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    /// TLS settings need `rediss://`; the password comes from one place; neither error shows the
    /// URL's password.
    #[test]
    fn settings_are_checked_against_the_url() {
        let dir = TempDir::new("url");
        let password = dir.file("password", "s3cret");
        let pem = dir.file("ca.pem", crate::tls::tests::TEST_CA);
        for (url, settings, setting, says) in [
            (
                "redis://h",
                PoolSettings::default().tls_ca_cert(&pem),
                "tls_ca_cert",
                "needs a rediss:// URL",
            ),
            (
                "redis+unix:///run/redis.sock",
                PoolSettings::default().tls_ca_cert(&pem),
                "tls_ca_cert",
                "needs a rediss:// URL",
            ),
            (
                "redis://:hunter2@h",
                PoolSettings::default().password_file(&password),
                "password_file",
                "the URL has a password too",
            ),
            (
                "redis://:hunter2@h",
                PoolSettings::default().credentials(pool_core::StaticCredentials::password("x")),
                "credentials",
                "the URL has a password too",
            ),
        ] {
            let err = RedisConfig::new(url).pool("main", settings).validate().unwrap_err();
            let ConfigError::Invalid { setting: s, .. } = &err else { panic!("{err}") };
            let msg = err.to_string();
            assert_eq!(s, setting, "{msg}");
            assert!(msg.contains(says) && !msg.contains("hunter2"), "{msg}");
        }
        let both = PoolSettings::default()
            .password_file(&password)
            .credentials(pool_core::StaticCredentials::password("x"));
        let err = both.validate("main").unwrap_err().to_string();
        assert!(err.contains("password_file") && err.contains("one place"), "{err}");
        let err = PoolSettings::default()
            .connect_commands(["CLIENT SETNAME app", "SELECT 2"])
            .validate("main")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("connect_commands[1] = \"SELECT 2\"") && err.contains("in the URL"),
            "{err}"
        );
    }

    #[test]
    fn urls_read_tls_and_unix_sockets() {
        let config = |url: &str| RedisConfig::new(url).fred_config();
        let tls = config("rediss://u:pw@cache.example:6380/2").unwrap();
        assert!(tls.tls.is_none(), "the pool sets its own TLS configuration");
        assert_eq!(
            (tls.username.as_deref(), tls.password.as_deref(), tls.database),
            (Some("u"), Some("pw"), Some(2))
        );
        assert!(RedisConfig::new("rediss://h").uses_tls());
        let unix = config("redis+unix:///run/redis/redis.sock?db=3").unwrap();
        assert_eq!(
            unix.server,
            fred::types::config::ServerConfig::Unix { path: "/run/redis/redis.sock".into() }
        );
        assert_eq!(unix.database, Some(3));
        let unix = config("redis+unix://:pw@localhost/run/redis.sock").unwrap();
        assert_eq!((unix.password.as_deref(), unix.database), (Some("pw"), None));
        for (url, says) in [
            ("redis+unix://", "expected redis+unix:///path/to/redis.sock"),
            ("redis+unix:///s.sock?db=x", "db=x is not a database number"),
            ("redis+unix:///s.sock?timeout=1", "a redis+unix URL takes only db"),
            ("rediss://", "names no host"),
            ("unix:///s.sock", "expected redis://"),
        ] {
            let err = config(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn timeouts_come_from_the_environment_and_zero_turns_them_off() {
        let c = RedisConfig::default()
            .with_env_from(env(&[
                ("REDIS_COMMAND_TIMEOUT", "1.5"),
                ("REDIS_CACHE_SHARED_COMMAND_TIMEOUT", "0"),
                ("REDIS_TCP_USER_TIMEOUT", "-1"),
            ]))
            .unwrap();
        let main = &c.pools["main"];
        assert_eq!(main.command_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(main.tcp_user_timeout, None);
        assert_eq!(c.pools["cache"].shared_command_timeout, None);
        assert_eq!(c.pools["cache"].tcp_user_timeout, Some(Duration::from_secs(20)));
        let err = RedisConfig::default()
            .with_env_from(env(&[("REDIS_TCP_USER_TIMEOUT", "1e9")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("REDIS_TCP_USER_TIMEOUT") && err.contains("49 days"), "{err}");
    }

    #[test]
    fn sentinel_and_cluster_urls_read_every_node() {
        use fred::types::config::ServerConfig;
        let url = "redis-sentinel://:pw@10.0.0.1:26379/2?sentinelServiceName=cache\
                   &node=10.0.0.2:26380&sentinelPassword=s3cret";
        let config = RedisConfig::new(url).fred_config().unwrap();
        let ServerConfig::Sentinel { hosts, service_name, password, .. } = &config.server else {
            panic!("{:?}", config.server)
        };
        assert_eq!((hosts.len(), service_name.as_str()), (2, "cache"));
        assert_eq!((password.as_deref(), config.password.as_deref()), (Some("s3cret"), Some("pw")));
        assert_eq!(config.database, Some(2));
        let shown = format!("{:?}", RedisConfig::new(url));
        assert!(!shown.contains("s3cret") && !shown.contains(":pw@"), "{shown}");

        let config = RedisConfig::new("redis-cluster://10.0.0.1:7000?node=10.0.0.2:7001")
            .fred_config()
            .unwrap();
        assert!(
            matches!(&config.server, ServerConfig::Clustered { hosts, .. } if hosts.len() == 2)
        );
        for (url, says) in [
            ("redis-sentinel://10.0.0.1:26379", "sentinelServiceName=NAME"),
            ("rediss-sentinel://h?sentinelServiceName=m", "connect without TLS"),
            ("rediss-cluster://h:7000", "connect without TLS"),
        ] {
            let err = RedisConfig::new(url).fred_config().unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn debug_hides_the_urls_password() {
        let shown = format!("{:?}", RedisConfig::new("redis://:hunter2@h"));
        assert!(!shown.contains("hunter2") && shown.contains("redis://:***@h"), "{shown}");
        let shown = format!(
            "{:?}",
            PoolSettings::default().credentials(pool_core::StaticCredentials::password("hunter2"))
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn invalid_settings_name_pool_and_setting() {
        for (settings, setting) in [
            (PoolSettings::default().pool_size(0), "pool_size"),
            (PoolSettings::default().pool_size(30).max_connections(20), "max_connections"),
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
        let mut base = PoolSettings::default();
        base.pool.health_check_interval = secs(30);
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
        base.pool.health_check_interval = None;
        assert_eq!(base.heartbeat(), None);
    }

    #[test]
    fn max_connections_is_the_sum_of_the_size_and_the_overflow() {
        let s = PoolSettings::default().pool_size(4).max_connections(10);
        assert_eq!(sizes(&s), (4, 6));
        assert_eq!(s.max_size(), 10);
        assert!(s.engine_config().validate().is_ok());
    }

    #[cfg(feature = "serde")]
    #[test]
    fn a_table_reads_the_engines_keys_beside_the_pools_own() {
        let s: PoolSettings = serde_json::from_str(
            r#"{"pool_size": 4, "max_connections": 6, "shared_clients": 2, "command_timeout": 0}"#,
        )
        .unwrap();
        assert_eq!((sizes(&s), s.shared_clients, s.command_timeout), ((4, 2), 2, None));
        let back: PoolSettings = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let err = serde_json::from_str::<PoolSettings>(r#"{"sharedclients": 2}"#).unwrap_err();
        assert!(err.to_string().contains("sharedclients"), "{err}");
        let s: PoolSettings = serde_json::from_str(
            r#"{"tls_ca_cert": "/etc/redis/ca.pem", "tls_cert": "/etc/redis/client.pem",
                "tls_key": "/etc/redis/client.key", "password_file": "/run/secrets/redis",
                "connect_commands": ["CLIENT SETNAME app"]}"#,
        )
        .unwrap();
        assert_eq!(s.tls_ca_cert.as_deref(), Some(std::path::Path::new("/etc/redis/ca.pem")));
        assert_eq!(s.connect_commands, ["CLIENT SETNAME app"]);
        let back: PoolSettings = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        for key in ["credentials", "on_connect"] {
            let err = serde_json::from_str::<PoolSettings>(&format!(r#"{{"{key}": null}}"#));
            assert!(err.is_err(), "{key} is set in code only");
        }
    }
}
