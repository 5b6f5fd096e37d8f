//! The server's configuration: built-in defaults, then a TOML file, then environment variables
//! (figment), with errors that name the key, where its value came from and the value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use pool_postgres::sqlx;
use pool_postgres::{PgManager, ResetOnReturn};
use pool_redis::{PoolSettings, RedisConfig};
use serde::{Deserialize, Serialize};

/// Everything `pool-admin serve` runs: the admin server and the pools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The admin server.
    pub admin: ServerConfig,
    /// PostgreSQL pools by name, each with its read replicas.
    pub postgres: BTreeMap<String, PostgresConfig>,
    /// Redis pools by name (`main`, `cache`...), all on `redis_url`.
    pub redis: BTreeMap<String, RedisPoolConfig>,
    /// The Redis server's URL \[`redis://127.0.0.1:6379`\] (`REDIS_URL`).
    pub redis_url: Secret,
}

/// The admin server's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where to listen \[`127.0.0.1:9187`\] (`POOL_ADMIN_LISTEN`).
    pub listen: SocketAddr,
    /// The bearer token every admin route requires (`POOL_ADMIN_TOKEN`). Without one the server
    /// refuses a non-loopback `listen` address; on loopback it makes up a random token at start,
    /// which `pool-admin serve` prints (with a dashboard link carrying it), and every admin route
    /// requires that one. [`AdminConfig::load`] trims whitespace around it (a secret file's
    /// trailing newline) and refuses a blank token, or one with whitespace inside it or
    /// characters other than printable ASCII, which no client could send.
    pub token: Option<Secret>,
    /// Serve `/metrics` without the token \[false\].
    pub metrics_open: bool,
    /// Serve the dashboard's page at `/dashboard/` \[true\]. The page holds no data: it asks the
    /// API for it with the token, like any other client.
    pub dashboard: bool,
    /// Run the auto-tuner \[false\].
    pub auto_tune: bool,
    /// Seconds between the optimizer's stats samples \[10\].
    pub sample_interval: f64,
    /// Seconds an active health check may take \[2\].
    pub health_timeout: f64,
    /// Seconds a client has to send a request's headers, and a request to be answered, body
    /// included \[30\]; an idle kept-alive connection is closed after it too. Greater than
    /// `health_timeout`.
    pub request_timeout: f64,
    /// Client connections served at once, 1 to 65536 \[128\]; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
            token: None,
            metrics_open: false,
            dashboard: true,
            auto_tune: false,
            sample_interval: 10.0,
            health_timeout: 2.0,
            request_timeout: 30.0,
            max_connections: 128,
        }
    }
}

/// The most clients the admin server may serve at once (`admin.max_connections`).
const MAX_ADMIN_CONNECTIONS: usize = 65_536;

/// The most connections one pool may open, `pool_size + max_overflow` (PostgreSQL) or
/// `max_connections` (Redis): pool-core's engine refuses more.
const MAX_POOL_CONNECTIONS: usize = 100_000;

/// One PostgreSQL pool (and its replicas' pools).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// The primary's URL (`DATABASE_URL` for `main`).
    pub url: Secret,
    /// Read replicas' URLs (`DATABASE_REPLICA_URLS`, comma-separated, for `main`).
    pub replicas: Vec<Secret>,
    /// Connections kept \[10\] (`DATABASE_POOL_SIZE`).
    pub pool_size: usize,
    /// Extra connections under load \[20\] (`DATABASE_POOL_OVERFLOW`).
    pub max_overflow: usize,
    /// Seconds an acquire may wait \[30\] (`DATABASE_POOL_TIMEOUT`).
    pub pool_timeout: f64,
    /// Seconds a connection lives; 0 or less keeps them \[3600\] (`DATABASE_POOL_RECYCLE`).
    pub pool_recycle: f64,
    /// Seconds one connect may take \[5\].
    pub connect_timeout: f64,
    /// Check a connection idle over `pre_ping_bypass` before handing it out \[true\].
    pub pool_pre_ping: bool,
    /// Seconds a connection used that recently is handed out without a check \[0.5\].
    pub pre_ping_bypass: f64,
    /// Hand out the most recently returned idle connection; `false` means the oldest \[true\].
    pub pool_use_lifo: bool,
    /// What a returned connection is cleared of before the next user gets it: `"session"`
    /// (the transaction and every session change) or `"transaction"` (only an open
    /// transaction); see `pool_postgres::ResetOnReturn` \[`"session"`\].
    pub reset_on_return: ResetOnReturn,
    /// Connections opened at start and kept open while idle \[`pool_size`\].
    pub min_idle: Option<usize>,
    /// Seconds between the maintenance task's rounds (checks of idle connections, retiring
    /// expired ones, topping up `min_idle`); 0 or less turns it off \[30\].
    pub health_check_interval: f64,
    /// Connects in flight at once per pool, so a restarted server is not stormed \[2\].
    pub max_connecting: usize,
    /// Seconds an overflow connection may sit idle before it is retired; 0 or less keeps them
    /// \[60\].
    pub idle_timeout: f64,
    /// Seconds a connection may be held before a warning names the line that took it; 0 or
    /// less turns leak detection off \[0\].
    pub leak_detection_threshold: f64,
    /// Seconds of replay lag past which a replica is skipped \[10\].
    pub max_replica_lag: f64,
    /// Seconds a replica that failed to connect or answer stays out of rotation before it is
    /// tried again \[30\].
    pub replica_ban: f64,
    /// Seconds a read waits for a replica's connection (and a causal read for its replay
    /// position) before it tries another replica or the primary \[2\].
    pub replica_timeout: f64,
    /// Seconds between the lag probe's rounds; 0 or less turns it off (no lag awareness) \[1\].
    pub lag_probe_interval: f64,
    /// Connections this application's pools may open on each server (primary and each
    /// replica); the optimizer never proposes more, and resizes beyond it are refused. Unset:
    /// read from each server at start (`max_connections` less reserved connections). Pools on
    /// one server (same host and port), from this cluster or another, share one budget: the
    /// smallest configured for any of them.
    pub connection_budget: Option<usize>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: Secret("postgres://postgres@127.0.0.1:5432/postgres".to_owned()),
            replicas: Vec::new(),
            pool_size: 10,
            max_overflow: 20,
            pool_timeout: 30.0,
            pool_recycle: 3600.0,
            connect_timeout: 5.0,
            pool_pre_ping: true,
            pre_ping_bypass: 0.5,
            pool_use_lifo: true,
            reset_on_return: ResetOnReturn::Session,
            min_idle: None,
            health_check_interval: 30.0,
            max_connecting: 2,
            idle_timeout: 60.0,
            leak_detection_threshold: 0.0,
            max_replica_lag: 10.0,
            replica_ban: 30.0,
            replica_timeout: 2.0,
            lag_probe_interval: 1.0,
            connection_budget: None,
        }
    }
}

/// One Redis pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisPoolConfig {
    /// Exclusive connections kept \[10\] (`REDIS_POOL_SIZE` for `main`).
    pub pool_size: usize,
    /// Most exclusive connections \[20\] (`REDIS_MAX_CONNECTIONS` for `main`).
    pub max_connections: usize,
    /// Shared multiplexed clients \[1\].
    pub shared_clients: usize,
    /// TCP keepalive on every socket \[true\].
    pub socket_keepalive: bool,
    /// Retry idempotent commands that timed out, once \[false\]; needs a
    /// `shared_command_timeout`.
    pub retry_on_timeout: bool,
    /// Seconds one command on an exclusive connection may take; 0 waits forever \[5\].
    pub command_timeout: f64,
    /// Seconds one command on a shared client may take; 0 waits forever, which is a few
    /// percent faster (no timer per command) \[5\].
    pub shared_command_timeout: f64,
    /// Seconds between health checks; 0 turns them off \[30\].
    pub health_check_interval: f64,
    /// Seconds an exclusive checkout may wait \[30\].
    pub pool_timeout: f64,
}

impl Default for RedisPoolConfig {
    fn default() -> Self {
        RedisPoolConfig {
            pool_size: 10,
            max_connections: 20,
            shared_clients: 1,
            socket_keepalive: true,
            retry_on_timeout: false,
            command_timeout: 5.0,
            shared_command_timeout: 5.0,
            health_check_interval: 30.0,
            pool_timeout: 30.0,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            admin: ServerConfig::default(),
            postgres: BTreeMap::from([("main".to_owned(), PostgresConfig::default())]),
            redis: BTreeMap::from([
                ("main".to_owned(), RedisPoolConfig::default()),
                (
                    "cache".to_owned(),
                    RedisPoolConfig {
                        pool_size: 20,
                        max_connections: 50,
                        ..RedisPoolConfig::default()
                    },
                ),
            ]),
            redis_url: Secret("redis://127.0.0.1:6379".to_owned()),
        }
    }
}

/// A value that never leaves the server in clear: URLs show `***` for their password, tokens
/// show `***` whole, in `Debug`, in logs and in every API response.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The value itself, for the code that connects or compares.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value with any password replaced by `***`; a value that is not a URL is hidden
    /// whole.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// A URL with its passwords hidden ([`pool_core::redact_url`]: the user info's password, and
/// query parameters naming a password); anything that is not a URL (a token) becomes `***`.
pub fn redact(value: &str) -> String {
    if pool_core::is_url(value) { pool_core::redact_url(value) } else { "***".to_owned() }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key has a value of the wrong type or out of range.
    #[error("invalid value for {key} = {value} from {source_name}: {reason}")]
    Invalid {
        /// The key, dotted (`postgres.main.pool_size`).
        key: String,
        /// Where the value came from: `environment variable DATABASE_POOL_SIZE`,
        /// `TOML file pool-admin.toml`, `the default`.
        source_name: String,
        /// The value as given (secrets redacted).
        value: String,
        /// What is wrong with it; a value it conflicts with that came from elsewhere is named
        /// with its source (`must be at least pool_size (30); pool_size is from environment
        /// variable REDIS_POOL_SIZE`).
        reason: String,
    },
    /// A key that no setting has: a typo, or a setting put in another section.
    #[error(
        "unknown key {key} in {source_name}{} (known keys: {})",
        .suggestion.as_ref().map_or_else(String::new, |s| format!(": did you mean {s}?")),
        .known.join(", ")
    )]
    UnknownKey {
        /// The key, dotted (`postgres.main.pool_sise`).
        key: String,
        /// Where it was found (`TOML file pool-admin.toml`).
        source_name: String,
        /// The known key closest to it, when one is close.
        suggestion: Option<String>,
        /// The keys its section knows.
        known: Vec<String>,
    },
    /// The file is missing, a directory or unreadable, or does not parse.
    #[error("{0}")]
    Other(String),
}

impl ConfigError {
    /// The error with every password it may echo hidden ([`redact_text`]): in a value shown
    /// (a URL in a setting that is not one), a key (a pool named by a URL), a reason that
    /// quotes the value (serde's `unknown variant`), or the TOML parser's words.
    fn redacted(self) -> ConfigError {
        match self {
            ConfigError::Invalid { key, source_name, value, reason } => ConfigError::Invalid {
                key: redact_text(&key),
                source_name,
                value: redact_text(&value),
                reason: redact_text(&reason),
            },
            ConfigError::UnknownKey { key, source_name, suggestion, known } => {
                ConfigError::UnknownKey {
                    key: redact_text(&key),
                    source_name,
                    suggestion: suggestion.as_deref().map(redact_text),
                    known: known.iter().map(|k| redact_text(k)).collect(),
                }
            }
            ConfigError::Other(message) => ConfigError::Other(redact_text(&message)),
        }
    }
}

/// `text` with every password it may hold hidden, for errors that echo what a user wrote;
/// hides too much rather than too little. On each line, from the first URL (`scheme://`) on,
/// everything from the first `:` to the last `@` goes (so a password holding blanks, or a
/// second URL's, goes too), as do the values of query parameters and `key=value` pairs naming
/// a password, anywhere ([`pool_core::redact_url`]).
fn redact_text(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| {
            let Some(at) = line.find("://") else { return pool_core::redact_url(line) };
            // The scheme: the letters, digits, `+`, `-` and `.` just before `://`.
            let scheme = line[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
                .map_or(0, |i| i + 1);
            let (before, url) = line.split_at(scheme);
            // `x` makes any scheme (`1db`, none at all) one that `redact_url` reads as a URL.
            let url = pool_core::redact_url(&format!("x{url}"));
            // A leading blank keeps it from reading as a URL, so it hides `password=` pairs.
            let url = pool_core::redact_url(&format!(" {}", &url[1..]));
            format!("{}{}", pool_core::redact_url(before), &url[1..])
        })
        .collect()
}

/// Where a value came from when neither the file nor the environment set it.
const DEFAULT_SOURCE: &str = "the default";

/// An environment variable, the key it sets and how its text is read. The unprefixed variables
/// configure the pools named `main` (`postgres.main`, `redis.main`), as `docs/operations.md`
/// documents; see [`AdminConfig::load`] for what happens when the file has no `main` pool.
const ENV: &[(&str, &str, Form)] = &[
    ("POOL_ADMIN_LISTEN", "admin.listen", Form::Text),
    ("POOL_ADMIN_TOKEN", "admin.token", Form::Text),
    ("DATABASE_URL", "postgres.main.url", Form::Text),
    ("DATABASE_REPLICA_URLS", "postgres.main.replicas", Form::List),
    ("DATABASE_POOL_SIZE", "postgres.main.pool_size", Form::Count),
    ("DATABASE_POOL_OVERFLOW", "postgres.main.max_overflow", Form::Count),
    (
        "DATABASE_POOL_TIMEOUT",
        "postgres.main.pool_timeout",
        Form::Seconds("it must be greater than zero"),
    ),
    ("DATABASE_POOL_RECYCLE", "postgres.main.pool_recycle", Form::Seconds("0 or less means never")),
    ("REDIS_URL", "redis_url", Form::Text),
    ("REDIS_POOL_SIZE", "redis.main.pool_size", Form::Count),
    ("REDIS_MAX_CONNECTIONS", "redis.main.max_connections", Form::Count),
];

/// How an environment variable's text is read: the numbers as pool-postgres and pool-redis
/// read the same variables, through pool-core's [`pool_core::parse_count`] and
/// [`pool_core::parse_seconds`], so that one text means the same to all three.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// The text as it is (a URL, a token, an address).
    Text,
    /// Comma-separated, blanks around each item trimmed, empty items dropped.
    List,
    /// A whole number.
    Count,
    /// Seconds; what a refusal adds about what the setting makes of a number.
    Seconds(&'static str),
}

impl Form {
    /// `text` as figment's value, or why it is not one of this form.
    fn read(self, text: &str) -> Result<Value, String> {
        match self {
            Form::Text => Ok(Value::from(text.to_owned())),
            Form::List => Ok(Value::from(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>(),
            )),
            Form::Count => pool_core::parse_count(text).map(Value::from).map_err(|e| e.to_string()),
            Form::Seconds(meaning) => pool_core::parse_seconds(text)
                .map(Value::from)
                .map_err(|e| format!("{e}; {meaning}")),
        }
    }
}

/// The config file, read once (so a pipe works as well as a file) and named by its path in
/// errors.
struct TomlFile {
    path: PathBuf,
    text: String,
}

impl TomlFile {
    /// Reads the file at `path`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Other`] naming the path when it does not exist, is a directory or cannot be
    /// read.
    fn read(path: &Path) -> Result<TomlFile, ConfigError> {
        let problem = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_owned(),
            Err(e) => format!("cannot be read: {e}"),
            Ok(m) if m.is_dir() => "is a directory, not a file".to_owned(),
            Ok(_) => match std::fs::read_to_string(path) {
                Ok(text) => return Ok(TomlFile { path: path.to_owned(), text }),
                Err(e) => format!("cannot be read: {e}"),
            },
        };
        Err(ConfigError::Other(format!("config file {} {problem}", path.display())))
    }
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", figment::Source::File(self.path.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.text).data().map_err(|e| match &e.kind {
            figment::error::Kind::Message(msg) => figment::Error::from(self.unshown(msg)),
            _ => e,
        })
    }
}

impl TomlFile {
    /// The TOML parser's `message` without its copy of the line it could not parse, which may
    /// hold a password that, the line being broken, cannot be told from the rest: where it is
    /// (line and column) and what is wrong stay, with the key whose value it is when the line
    /// starts with one.
    fn unshown(&self, message: &str) -> String {
        // The copy: `  |`, `2 | url = "postgres://...`, `  |      ^`.
        let snippet = |line: &str| {
            let line = line.trim_start();
            let number = line.trim_start_matches(|c: char| c.is_ascii_digit());
            line.starts_with('|') || (number.len() < line.len() && number.starts_with(" |"))
        };
        let mut lines = message.lines().filter(|l| !snippet(l)).map(str::trim);
        let Some(first) = lines.next() else { return String::new() };
        let what: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
        let whose = self.key_of_value_at(first).map(|k| format!(", in the value of {k}"));
        format!(
            "{first}{}: {} (the line is not shown: it may hold a password)",
            whose.unwrap_or_default(),
            what.join("; ")
        )
    }

    /// The key whose value `at` (the parser's `TOML parse error at line L, column C`) points
    /// into, when that line starts with a plain key (`url = ...`) and the column is past its
    /// `=`.
    fn key_of_value_at(&self, at: &str) -> Option<&str> {
        let rest = at.strip_prefix("TOML parse error at line ")?;
        let (line, column) = rest.split_once(", column ")?;
        let (line, column): (usize, usize) = (line.parse().ok()?, column.parse().ok()?);
        let text = self.text.lines().nth(line.checked_sub(1)?)?;
        let (key, _) = text.split_once('=')?;
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        let past_equals = column > key.chars().count() + 1;
        let key = key.trim();
        (!key.is_empty() && key.chars().all(plain) && past_equals).then_some(key)
    }
}

/// The built-in defaults as a figment provider, named [`DEFAULT_SOURCE`] in errors.
struct Defaults(Value);

impl Provider for Defaults {
    fn metadata(&self) -> Metadata {
        Metadata::named(DEFAULT_SOURCE)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        match &self.0 {
            Value::Dict(_, dict) => Ok(Profile::Default.collect(dict.clone())),
            _ => Err(figment::Error::from("the defaults are not a table".to_owned())),
        }
    }
}

/// One environment variable, read, as a figment provider, so errors can name it.
struct EnvVar {
    var: &'static str,
    key: &'static str,
    value: Value,
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("environment variable {}", self.var))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let value = self.value.clone();
        let mut dict = Dict::new();
        let mut parts: Vec<&str> = self.key.split('.').collect();
        let last = parts.pop().unwrap_or(self.key);
        let mut leaf = Dict::new();
        leaf.insert(last.to_owned(), value);
        let mut nested = Value::from(leaf);
        while let Some(part) = parts.pop() {
            let mut d = Dict::new();
            d.insert(part.to_owned(), nested);
            nested = Value::from(d);
        }
        if let Value::Dict(_, d) = nested {
            dict = d;
        }
        Ok(Profile::Default.collect(dict))
    }
}

impl AdminConfig {
    /// Loads defaults, then `file` (if given), then the environment through `lookup`.
    ///
    /// A file with its own `[postgres.*]` or `[redis.*]` tables replaces that backend's default
    /// pools. The environment variables `DATABASE_*` configure the PostgreSQL pool `main`, and
    /// `REDIS_POOL_SIZE`/`REDIS_MAX_CONNECTIONS` the Redis pool `main`: when the file defines
    /// other pools but no `main`, setting one of them adds a pool `main` (the variable's value
    /// over the built-in defaults) beside the file's pools. `REDIS_URL` sets the URL every Redis
    /// pool uses and adds no pool.
    ///
    /// Everything `pool-admin serve` would refuse before it connects is refused here, so that
    /// `pool-admin config check` and `serve` agree: URLs that do not parse (a bad port, an
    /// unknown `sslmode`), settings the pools' engines refuse, and a non-loopback `admin.listen`
    /// without an `admin.token`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the key, its source and its value (passwords hidden),
    /// [`ConfigError::UnknownKey`] for a key no setting has, or [`ConfigError::Other`] for a file
    /// that is missing, a directory, unreadable or not TOML.
    pub fn load(
        file: Option<&Path>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AdminConfig, ConfigError> {
        AdminConfig::load_unredacted(file, lookup).map_err(ConfigError::redacted)
    }

    /// [`load`](Self::load), with what its errors echo not yet redacted.
    fn load_unredacted(
        file: Option<&Path>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AdminConfig, ConfigError> {
        let mut defaults = AdminConfig::default();
        let file = file.map(TomlFile::read).transpose()?;
        if let Some(file) = &file {
            // A file that lists its own pools replaces the default pools of that backend.
            let own = Figment::from(file);
            if own.find_value("postgres").is_ok() {
                defaults.postgres.clear();
            }
            if own.find_value("redis").is_ok() {
                defaults.redis.clear();
            }
        }
        let mut figment = Figment::from(Defaults(defaults.for_merge()));
        if let Some(file) = file {
            figment = figment.merge(file);
        }
        for &(var, key, form) in ENV {
            if let Some(text) = lookup(var) {
                let value = form.read(&text).map_err(|reason| ConfigError::Invalid {
                    key: key.to_owned(),
                    source_name: format!("environment variable {var}"),
                    value: format!("string {text:?}"),
                    reason,
                })?;
                figment = figment.merge(EnvVar { var, key, value });
            }
        }
        let mut config: AdminConfig = figment.extract().map_err(|e| describe(&figment, e))?;
        config.validate(&figment)?;
        // A secret file's trailing newline is no part of the token a client sends.
        if let Some(token) = &mut config.admin.token {
            token.0 = token.0.trim().to_owned();
        }
        Ok(config)
    }

    /// These settings as figment sees them (secrets in clear, so they round-trip).
    fn for_merge(&self) -> Value {
        let d = self;
        let mut v = serde_json::to_value(d).unwrap_or_default();
        v["redis_url"] = serde_json::Value::String(d.redis_url.0.clone());
        for (name, pg) in &d.postgres {
            v["postgres"][name]["url"] = serde_json::Value::String(pg.url.0.clone());
        }
        serde_json::from_value::<Value>(v).unwrap_or_else(|_| Value::from(Dict::new()))
    }

    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let invalid = |key: String, value: String, reason: &str| {
            // `postgres.main.replicas[1]` came from wherever `postgres.main.replicas` did.
            let lookup =
                key.strip_suffix(']').and_then(|k| k.rsplit_once('[')).map_or(&*key, |(k, _)| k);
            let source_name = source_in(figment, lookup);
            ConfigError::Invalid { key, source_name, value, reason: reason.to_owned() }
        };
        // What a refusal of `key` for its conflict with `other` (shown as `name`) adds: where
        // `other`'s value came from, when that is not where `key`'s did.
        let also = |key: &str, other: &str, name: &str| {
            let from = source_in(figment, other);
            if from == source_in(figment, key) {
                String::new()
            } else {
                format!("; {name} is from {from}")
            }
        };
        let duration = |key: String, v: f64| match duration_problem(v) {
            Some(reason) => Err(invalid(key, v.to_string(), reason)),
            None => Ok(()),
        };
        for (name, pg) in &self.postgres {
            let key = |k: &str| format!("postgres.{name}.{k}");
            if name.is_empty() {
                return Err(invalid(
                    "postgres".into(),
                    "\"\"".into(),
                    "a pool's name must not be empty",
                ));
            }
            for (k, v) in [
                ("pool_timeout", pg.pool_timeout),
                ("pool_recycle", pg.pool_recycle),
                ("connect_timeout", pg.connect_timeout),
                ("max_replica_lag", pg.max_replica_lag),
                ("replica_ban", pg.replica_ban),
                ("idle_timeout", pg.idle_timeout),
                ("leak_detection_threshold", pg.leak_detection_threshold),
                ("pre_ping_bypass", pg.pre_ping_bypass),
                ("health_check_interval", pg.health_check_interval),
                ("replica_timeout", pg.replica_timeout),
                ("lag_probe_interval", pg.lag_probe_interval),
            ] {
                duration(key(k), v)?;
            }
            if pg.pool_size == 0 {
                return Err(invalid(key("pool_size"), "0".into(), "must be at least 1"));
            }
            if pg.pool_size.checked_add(pg.max_overflow).is_none_or(|n| n > MAX_POOL_CONNECTIONS) {
                return Err(invalid(
                    key("max_overflow"),
                    pg.max_overflow.to_string(),
                    &format!(
                        "pool_size + max_overflow must not exceed {MAX_POOL_CONNECTIONS} (pool_size is {}){}",
                        pg.pool_size,
                        also(&key("max_overflow"), &key("pool_size"), "pool_size"),
                    ),
                ));
            }
            for (k, v) in [
                ("pool_timeout", pg.pool_timeout),
                ("connect_timeout", pg.connect_timeout),
                ("max_replica_lag", pg.max_replica_lag),
                ("replica_ban", pg.replica_ban),
                ("replica_timeout", pg.replica_timeout),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(invalid(
                        key(k),
                        v.to_string(),
                        "must be a number of seconds greater than zero",
                    ));
                }
            }
            for (k, v) in [
                ("pool_recycle", pg.pool_recycle),
                ("idle_timeout", pg.idle_timeout),
                ("leak_detection_threshold", pg.leak_detection_threshold),
                ("health_check_interval", pg.health_check_interval),
                ("lag_probe_interval", pg.lag_probe_interval),
            ] {
                if !v.is_finite() {
                    return Err(invalid(key(k), v.to_string(), "must be a number of seconds"));
                }
            }
            if !(pg.pre_ping_bypass.is_finite() && pg.pre_ping_bypass >= 0.0) {
                return Err(invalid(
                    key("pre_ping_bypass"),
                    pg.pre_ping_bypass.to_string(),
                    "must be 0 (check every time) or a number of seconds",
                ));
            }
            if pg.max_connecting == 0 {
                return Err(invalid(key("max_connecting"), "0".into(), "must be at least 1"));
            }
            if let Some(min_idle) = pg.min_idle.filter(|&m| m > pg.pool_size) {
                return Err(invalid(
                    key("min_idle"),
                    min_idle.to_string(),
                    &format!(
                        "must be at most pool_size ({}){}",
                        pg.pool_size,
                        also(&key("min_idle"), &key("pool_size"), "pool_size"),
                    ),
                ));
            }
            if let Some(reason) = postgres_url_problem(pg.url.expose()) {
                return Err(invalid(key("url"), pg.url.redacted(), &reason));
            }
            for (i, r) in pg.replicas.iter().enumerate() {
                if let Some(reason) = postgres_url_problem(r.expose()) {
                    return Err(invalid(key(&format!("replicas[{i}]")), r.redacted(), &reason));
                }
                // The replicas' pools are registered as `<name>-replica-<n>`, beside the others.
                let pool = format!("{name}-replica-{}", i + 1);
                if self.postgres.contains_key(&pool) {
                    return Err(invalid(
                        key(&format!("replicas[{i}]")),
                        r.redacted(),
                        &format!(
                            "its pool is named {pool}, as is the pool of [postgres.{pool}]: rename that pool"
                        ),
                    ));
                }
            }
        }
        if !self.redis.is_empty()
            && let Some(reason) = redis_url_problem(self.redis_url.expose())
        {
            return Err(invalid("redis_url".into(), self.redis_url.redacted(), &reason));
        }
        for (name, r) in &self.redis {
            let key = |k: &str| format!("redis.{name}.{k}");
            if name.is_empty() {
                return Err(invalid(
                    "redis".into(),
                    "\"\"".into(),
                    "a pool's name must not be empty",
                ));
            }
            for (k, v) in [
                ("pool_timeout", r.pool_timeout),
                ("health_check_interval", r.health_check_interval),
                ("command_timeout", r.command_timeout),
                ("shared_command_timeout", r.shared_command_timeout),
            ] {
                duration(key(k), v)?;
            }
            if r.pool_size == 0 {
                return Err(invalid(key("pool_size"), "0".into(), "must be at least 1"));
            }
            if r.max_connections < r.pool_size {
                return Err(invalid(
                    key("max_connections"),
                    r.max_connections.to_string(),
                    &format!(
                        "must be at least pool_size ({}){}",
                        r.pool_size,
                        also(&key("max_connections"), &key("pool_size"), "pool_size"),
                    ),
                ));
            }
            if r.max_connections > MAX_POOL_CONNECTIONS {
                return Err(invalid(
                    key("max_connections"),
                    r.max_connections.to_string(),
                    &format!("must be at most {MAX_POOL_CONNECTIONS}"),
                ));
            }
            if r.shared_clients == 0 {
                return Err(invalid(key("shared_clients"), "0".into(), "must be at least 1"));
            }
            for (k, v) in [("pool_timeout", r.pool_timeout)] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(invalid(
                        key(k),
                        v.to_string(),
                        "must be a number of seconds greater than zero",
                    ));
                }
            }
            for (k, v) in [
                ("health_check_interval", r.health_check_interval),
                ("command_timeout", r.command_timeout),
                ("shared_command_timeout", r.shared_command_timeout),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(invalid(
                        key(k),
                        v.to_string(),
                        "must be 0 (off) or a number of seconds",
                    ));
                }
            }
            if r.retry_on_timeout && r.shared_command_timeout == 0.0 {
                return Err(invalid(
                    key("retry_on_timeout"),
                    "true".into(),
                    &format!(
                        "needs a shared_command_timeout: with 0 no shared command times out{}",
                        also(
                            &key("retry_on_timeout"),
                            &key("shared_command_timeout"),
                            "shared_command_timeout"
                        ),
                    ),
                ));
            }
        }
        for (k, v) in [
            ("admin.sample_interval", self.admin.sample_interval),
            ("admin.health_timeout", self.admin.health_timeout),
            ("admin.request_timeout", self.admin.request_timeout),
        ] {
            duration(k.to_owned(), v)?;
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(
                    k.to_owned(),
                    v.to_string(),
                    "must be a number of seconds greater than zero",
                ));
            }
        }
        if self.admin.request_timeout <= self.admin.health_timeout {
            return Err(invalid(
                "admin.request_timeout".into(),
                self.admin.request_timeout.to_string(),
                &format!(
                    "must be greater than admin.health_timeout ({}), or health checks time out as requests{}",
                    self.admin.health_timeout,
                    also("admin.request_timeout", "admin.health_timeout", "admin.health_timeout"),
                ),
            ));
        }
        if !(1..=MAX_ADMIN_CONNECTIONS).contains(&self.admin.max_connections) {
            return Err(invalid(
                "admin.max_connections".into(),
                self.admin.max_connections.to_string(),
                "must be from 1 to 65536 (with 0 no client is ever served)",
            ));
        }
        if let Some(token) = &self.admin.token
            && let Some((shown, reason)) = token_problem(token)
        {
            return Err(invalid("admin.token".into(), shown, reason));
        }
        let listen = self.admin.listen;
        if self.admin.token.is_none() && !listen.ip().is_loopback() {
            return Err(invalid(
                "admin.listen".into(),
                listen.to_string(),
                // The server's own words, which embedders calling `Server::bind` with a config
                // built in code get from it.
                &crate::ServeError::TokenRequired(listen).to_string(),
            ));
        }
        Ok(())
    }
}

/// Why `token`, with surrounding whitespace trimmed as [`AdminConfig::load`] trims it, is not a
/// token a client can send in `Authorization: Bearer <token>`, with the value to show for it;
/// `None` when it is one. The token is never shown: only a blank one, which holds nothing, is
/// (escaped, so its whitespace can be seen).
fn token_problem(token: &Secret) -> Option<(String, &'static str)> {
    let raw = token.expose();
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        let reason = if raw.is_empty() {
            "must not be empty"
        } else {
            "must not be empty: it is only whitespace, which is trimmed from around a token"
        };
        return Some((format!("{raw:?}"), reason));
    }
    let reason = if trimmed.contains(char::is_whitespace) {
        "has whitespace inside it: a bearer token is one word (RFC 6750), so a client would not \
         send it as it is (whitespace around it is trimmed)"
    } else if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
        "must be printable ASCII: the server reads the Authorization header as ASCII, so no \
         client could send a token with control or non-ASCII characters"
    } else {
        return None;
    };
    Some((token.redacted(), reason))
}

/// Why `url` is not a PostgreSQL URL the pools can connect with (what
/// [`PgManager::from_url`] finds, as `serve` does when it builds them); `None` when it is one.
fn postgres_url_problem(url: &str) -> Option<String> {
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Some("must be a postgres:// URL".to_owned());
    }
    let e = PgManager::from_url(url).err()?;
    Some(format!("not a valid PostgreSQL URL: {}", innermost(&e.source)))
}

/// What sqlx says is wrong, without its wrappers: sqlx wraps some configuration errors in
/// another, which would print "error with configuration: error with configuration: …".
fn innermost(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(inner) => match inner.downcast_ref::<sqlx::Error>() {
            Some(e) => innermost(e),
            None => inner.to_string(),
        },
        e => e.to_string(),
    }
}

/// Why `url` is not a Redis URL the pools can connect with (what pool-redis's
/// [`RedisConfig::validate`] finds, as `serve` does when it builds them); `None` when it is one.
fn redis_url_problem(url: &str) -> Option<String> {
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        return Some("must be a redis:// URL".to_owned());
    }
    // fred parses with the `url` crate but keeps only the kind of failure ("InvalidPort"): the
    // same parser first, for its own words ("invalid port number").
    if let Err(e) = ::url::Url::parse(url) {
        return Some(format!("not a valid Redis URL: {e}"));
    }
    match RedisConfig::new(url).pool("main", PoolSettings::default()).validate() {
        Err(pool_redis::ConfigError::Url { source, .. }) => {
            Some(format!("not a valid Redis URL: {}", source.details()))
        }
        _ => None,
    }
}

/// Where a value came from, for error messages: `TOML file <path>`, `environment variable
/// <VAR>` or [`DEFAULT_SOURCE`].
fn source_of(metadata: &Metadata) -> String {
    match &metadata.source {
        Some(figment::Source::File(path)) => format!("TOML file {}", path.display()),
        _ => metadata.name.to_string(),
    }
}

/// Where the value of `key` (dotted) in `figment` came from; a key no source set has its
/// value from serde's defaults ([`DEFAULT_SOURCE`]).
fn source_in(figment: &Figment, key: &str) -> String {
    figment.find_metadata(key).map_or_else(|| DEFAULT_SOURCE.to_owned(), source_of)
}

fn describe(figment: &Figment, e: figment::Error) -> ConfigError {
    let key = e.path.join(".");
    let source_name =
        e.metadata.as_ref().map(source_of).unwrap_or_else(|| source_in(figment, &key));
    match &e.kind {
        figment::error::Kind::InvalidType(actual, expected) => ConfigError::Invalid {
            value: actual_value(&key, actual),
            key,
            source_name,
            reason: format!("expected {expected}"),
        },
        figment::error::Kind::InvalidValue(actual, expected) => ConfigError::Invalid {
            value: actual_value(&key, actual),
            key,
            source_name,
            reason: format!("expected {expected}"),
        },
        figment::error::Kind::UnknownField(field, expected) => ConfigError::UnknownKey {
            suggestion: closest(field, expected).map(str::to_owned),
            known: expected.iter().map(|k| (*k).to_owned()).collect(),
            key,
            source_name,
        },
        figment::error::Kind::Message(msg) if !key.is_empty() => {
            let value = figment
                .find_value(&key)
                .map_or_else(|_| "(unknown)".to_owned(), |v| actual_value(&key, &v.to_actual()));
            ConfigError::Invalid { key, source_name, value, reason: msg.clone() }
        }
        // A file that is not TOML (the parser's message shows the line), or another complaint:
        // figment's words for it and where it was, each said once (figment's own `Display`
        // names the file twice and prefixes the key with the profile, `default.`).
        kind => ConfigError::Other(match (key.is_empty(), e.metadata.is_some()) {
            (true, true) => format!("{source_name}: {}", kind.to_string().trim_end()),
            (true, false) => e.to_string(),
            (false, _) => format!("{key} in {source_name}: {kind}"),
        }),
    }
}

fn actual_value(key: &str, actual: &figment::error::Actual) -> String {
    let shown = actual.to_string();
    if key.ends_with("url") || key.ends_with("token") || key.ends_with("replicas") {
        "***".to_owned()
    } else {
        shown
    }
}

/// The longest duration a setting accepts, in seconds: 100 years, as pool-core's engine
/// (longer ones would overflow its clock).
const MAX_SECS: f64 = pool_core::MAX_DURATION.as_secs_f64();

/// Why `v` seconds, if positive, is not a duration the pools accept: over [`MAX_SECS`] (or more
/// than [`Duration::try_from_secs_f64`] converts), or under one nanosecond, which converts to
/// zero and the pools refuse. Zero, negative and non-finite values pass here; the checks of
/// each setting judge those.
fn duration_problem(v: f64) -> Option<&'static str> {
    if !(v > 0.0 && v.is_finite()) {
        None
    } else if v > MAX_SECS || Duration::try_from_secs_f64(v).is_err() {
        Some("must be at most 100 years (3153600000 seconds)")
    } else if Duration::from_secs_f64(v).is_zero() {
        Some("is less than a nanosecond (1e-9 seconds), the shortest duration the pools take")
    } else {
        None
    }
}

/// The known key closest to `typo`, if one is close enough to be what was meant: at most one
/// edit per three characters (and at least one), as rustc suggests names.
fn closest<'a>(typo: &str, known: &[&'a str]) -> Option<&'a str> {
    let most = typo.chars().count().max(3) / 3;
    known
        .iter()
        .map(|k| (edit_distance(typo, k), *k))
        .filter(|&(d, _)| d <= most)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// The edits (insertions, deletions, substitutions, swaps of neighbours) that turn `a` into `b`:
/// the optimal string alignment distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: the distance between a's first i characters and b's first j.
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Seconds as a duration; `None` for zero, less, or not a number. [`AdminConfig::load`]
/// rejects values above 100 years; one that got here another way is capped at 100 years
/// rather than panicking in the conversion.
pub(crate) fn secs(v: f64) -> Option<Duration> {
    (v > 0.0).then(|| Duration::from_secs_f64(v.min(MAX_SECS)))
}

#[cfg(test)]
mod tests;
