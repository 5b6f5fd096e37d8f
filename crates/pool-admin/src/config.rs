//! The server's configuration: built-in defaults, then a TOML file, then environment variables
//! (figment), with errors that name the key, where its value came from and the value.
//!
//! Each backend's part (`[postgres.*]`; `[redis.*]` and `redis_url`) is read only in a build with
//! its feature (`postgres`, `redis`); a build without it refuses a file that sets it, naming the
//! key and the feature, and reads none of its environment variables.

#[cfg(any(feature = "postgres", feature = "redis"))]
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
pub use pool_core::Secret;
use pool_core::{EnvForm, EnvValue, PoolConfig};
#[cfg(feature = "postgres")]
pub use pool_postgres::PostgresConfig;
#[cfg(feature = "redis")]
use pool_redis::{PoolSettings, RedisConfig};
use serde::{Deserialize, Serialize};

/// Everything `pool-admin serve` runs: the admin server and the pools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The admin server.
    pub admin: ServerConfig,
    /// PostgreSQL clusters by name, each a primary with its read replicas: pool-postgres's
    /// settings, the engine's keys (`pool_size`...) beside the cluster's own (`replicas`...).
    /// Feature `postgres`.
    #[cfg(feature = "postgres")]
    pub postgres: BTreeMap<String, PostgresConfig>,
    /// Redis pools by name (`main`, `cache`...), all on `redis_url`: pool-redis's settings, the
    /// engine's keys beside the shared clients' own. Feature `redis`.
    #[cfg(feature = "redis")]
    pub redis: BTreeMap<String, PoolSettings>,
    /// The Redis server's URL \[`redis://127.0.0.1:6379`\] (`REDIS_URL`). Feature `redis`.
    #[cfg(feature = "redis")]
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

// Derivable only with no backend, whose default pools it names.
#[allow(clippy::derivable_impls)]
impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            admin: ServerConfig::default(),
            #[cfg(feature = "postgres")]
            postgres: BTreeMap::from([("main".to_owned(), PostgresConfig::default())]),
            // pool-redis's own defaults: `main` and `cache` on the local server.
            #[cfg(feature = "redis")]
            redis: RedisConfig::default().pools,
            #[cfg(feature = "redis")]
            redis_url: Secret(RedisConfig::default().url),
        }
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
    /// A key of a backend this build of pool-admin leaves out: the file sets `[redis.*]` in a
    /// build without the `redis` feature, or `[postgres.*]` without `postgres`.
    #[error(
        "{key} in {source_name} configures {backend}, which this build of pool-admin leaves out: build pool-admin with its `{feature}` feature, or remove the key"
    )]
    NotBuilt {
        /// The key, dotted (`redis.cache`, `redis_url`).
        key: String,
        /// Where it was found (`TOML file pool-admin.toml`).
        source_name: String,
        /// The backend it configures (`Redis`, `PostgreSQL`).
        backend: &'static str,
        /// The feature that reads it (`redis`, `postgres`).
        feature: &'static str,
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
            ConfigError::NotBuilt { key, source_name, backend, feature } => {
                ConfigError::NotBuilt { key: redact_text(&key), source_name, backend, feature }
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

/// A backend's top-level keys in the file, as [`not_built`] checks them: the key, the backend's
/// name, the feature that reads it, and whether this build has that feature.
#[derive(Debug, Clone, Copy)]
struct Backend {
    key: &'static str,
    name: &'static str,
    feature: &'static str,
    built: bool,
}

/// The keys each backend's feature reads, and whether this build reads them.
const BACKENDS: [Backend; 3] = [
    Backend {
        key: "postgres",
        name: "PostgreSQL",
        feature: "postgres",
        built: cfg!(feature = "postgres"),
    },
    Backend { key: "redis", name: "Redis", feature: "redis", built: cfg!(feature = "redis") },
    Backend { key: "redis_url", name: "Redis", feature: "redis", built: cfg!(feature = "redis") },
];

/// Refuses a file (`own`, the file alone) that sets a key of a backend this build leaves out,
/// naming the key (a table's first pool: `redis.cache`), and the feature that would read it;
/// without this check it would read as an unknown key, with a typo's suggestion.
///
/// # Errors
///
/// [`ConfigError::NotBuilt`] for the first such key.
fn not_built(own: &Figment, backends: &[Backend]) -> Result<(), ConfigError> {
    for backend in backends.iter().filter(|b| !b.built) {
        let Ok(value) = own.find_value(backend.key) else { continue };
        let key = match &value {
            Value::Dict(_, pools) => pools
                .keys()
                .next()
                .map_or_else(|| backend.key.to_owned(), |pool| format!("{}.{pool}", backend.key)),
            _ => backend.key.to_owned(),
        };
        return Err(ConfigError::NotBuilt {
            source_name: source_in(own, backend.key),
            key,
            backend: backend.name,
            feature: backend.feature,
        });
    }
    Ok(())
}

/// The server's own environment variables and the keys they set. The pools' variables are the
/// backends' own lists ([`PostgresConfig::env_vars`], [`RedisConfig::pool_env_vars`]), read by
/// [`env_vars`] for the pools named `main` (and, for Redis, every pool by its prefix), as
/// `docs/operations.md` documents; see [`AdminConfig::load`] for what happens when the file has
/// no `main` pool.
const SERVER_ENV: &[(&str, &str)] =
    &[("POOL_ADMIN_LISTEN", "admin.listen"), ("POOL_ADMIN_TOKEN", "admin.token")];

/// Every environment variable that may set a key, with the key (dotted) and the form of its
/// text, in the order they apply (later wins): the server's, `REDIS_URL`, the PostgreSQL cluster
/// `main`'s, then each Redis pool's, unprefixed for `main` before prefixed. `redis_pools` are
/// the Redis pools the file and the defaults name. A backend left out of the build has none.
#[cfg_attr(not(feature = "redis"), allow(unused_variables))]
fn env_vars(redis_pools: &[String]) -> Vec<(String, String, EnvForm)> {
    #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(unused_mut))]
    let mut vars: Vec<(String, String, EnvForm)> = SERVER_ENV
        .iter()
        .map(|&(var, key)| (var.to_owned(), key.to_owned(), EnvForm::Text))
        .collect();
    #[cfg(feature = "redis")]
    vars.push(("REDIS_URL".to_owned(), "redis_url".to_owned(), EnvForm::Text));
    #[cfg(feature = "postgres")]
    for (var, key, form) in PostgresConfig::env_vars() {
        vars.push((var, format!("postgres.main.{key}"), form));
    }
    #[cfg(feature = "redis")]
    vars.extend(redis_env_vars(redis_pools));
    vars
}

/// The Redis pools' environment variables, as [`env_vars`] orders them.
#[cfg(feature = "redis")]
fn redis_env_vars(redis_pools: &[String]) -> Vec<(String, String, EnvForm)> {
    let mut vars = Vec::new();
    for (var, key, form) in RedisConfig::pool_env_vars("REDIS_") {
        vars.push((var, format!("redis.main.{key}"), form));
    }
    let mut pools: Vec<&str> = redis_pools.iter().map(String::as_str).collect();
    if !pools.contains(&"main") {
        pools.push("main");
    }
    for pool in pools {
        for (var, key, form) in RedisConfig::pool_env_vars(&RedisConfig::env_prefix(pool)) {
            vars.push((var, format!("redis.{pool}.{key}"), form));
        }
    }
    vars
}

/// An environment variable's value as figment's: numbers stay numbers, so the file's `30` and
/// a variable's go through the same settings' readers.
fn env_value(value: EnvValue) -> Value {
    match value {
        EnvValue::Text(text) => Value::from(text),
        EnvValue::List(items) => Value::from(items),
        EnvValue::Count(n) => Value::from(n),
        EnvValue::Seconds(secs) => Value::from(secs),
        _ => Value::from(Dict::new()),
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
    var: String,
    key: String,
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
        let last = parts.pop().unwrap_or(&self.key);
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
        #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(unused_mut))]
        let mut defaults = AdminConfig::default();
        let file = file.map(TomlFile::read).transpose()?;
        if let Some(file) = &file {
            let own = Figment::from(file);
            not_built(&own, &BACKENDS)?;
            // A file that lists its own pools replaces the default pools of that backend.
            #[cfg(feature = "postgres")]
            if own.find_value("postgres").is_ok() {
                defaults.postgres.clear();
            }
            #[cfg(feature = "redis")]
            if own.find_value("redis").is_ok() {
                defaults.redis.clear();
            }
        }
        let mut figment = Figment::from(Defaults(defaults.for_merge()));
        if let Some(file) = file {
            figment = figment.merge(file);
        }
        let redis_pools: Vec<String> = match figment.find_value("redis") {
            Ok(Value::Dict(_, pools)) => pools.keys().cloned().collect(),
            _ => Vec::new(),
        };
        for (var, key, form) in env_vars(&redis_pools) {
            if let Some(text) = lookup(&var) {
                let value = form.read(&text).map_err(|reason| ConfigError::Invalid {
                    key: key.clone(),
                    source_name: format!("environment variable {var}"),
                    value: format!("string {text:?}"),
                    reason,
                })?;
                figment = figment.merge(EnvVar { var, key, value: env_value(value) });
            }
        }
        let mut config: AdminConfig =
            figment.extract().map_err(|e| describe(&figment, within_pool(&figment, e)))?;
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
        #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(unused_mut))]
        let mut v = serde_json::to_value(d).unwrap_or_default();
        #[cfg(feature = "redis")]
        {
            v["redis_url"] = serde_json::Value::String(d.redis_url.0.clone());
        }
        #[cfg(feature = "postgres")]
        for (name, pg) in &d.postgres {
            v["postgres"][name]["url"] = serde_json::Value::String(pg.url.0.clone());
        }
        serde_json::from_value::<Value>(v).unwrap_or_else(|_| Value::from(Dict::new()))
    }

    /// Checks what the types could not: each cluster's and each Redis pool's settings, by the
    /// backend that owns them, then what the server adds (pool names, its own settings).
    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let invalid = |key: String, value: String, reason: &str| {
            // `postgres.main.replicas[1]` came from wherever `postgres.main.replicas` did.
            let lookup =
                key.strip_suffix(']').and_then(|k| k.rsplit_once('[')).map_or(&*key, |(k, _)| k);
            let source_name = source_in(figment, lookup);
            // The value as written, unless it may hold a password (the backend's is redacted).
            let secret = ["url", "token", "replicas"].iter().any(|s| lookup.ends_with(s));
            let value = match figment.find_value(&key) {
                Ok(v @ (Value::Num(..) | Value::Bool(..) | Value::String(..))) if !secret => {
                    shown(&v)
                }
                _ => value,
            };
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
        // A backend's refusal of `setting` in the section `section`, with where the setting it
        // conflicts with came from when that is elsewhere.
        #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(unused_variables))]
        let refused = |section: &str, setting: &str, value: String, reason: &str| {
            let key = format!("{section}.{setting}");
            let partner = match setting {
                "min_idle" | "max_overflow" | "max_connections" => Some("pool_size"),
                "pool_size" => Some("max_overflow"),
                "retry_on_timeout" => Some("shared_command_timeout"),
                _ => None,
            };
            let reason = match partner {
                Some(p) if reason.contains(p) => {
                    format!("{reason}{}", also(&key, &format!("{section}.{p}"), p))
                }
                _ => reason.to_owned(),
            };
            invalid(key, value, &reason)
        };
        #[cfg(feature = "postgres")]
        for (name, pg) in &self.postgres {
            if name.is_empty() {
                return Err(invalid(
                    "postgres".into(),
                    "\"\"".into(),
                    "a pool's name must not be empty",
                ));
            }
            if let Err(pool_postgres::ConfigError::Invalid { setting, value, reason }) =
                pg.validate()
            {
                return Err(refused(&format!("postgres.{name}"), &setting, value, &reason));
            }
            for (i, r) in pg.replicas.iter().enumerate() {
                // The replicas' pools are registered as `<name>-replica-<n>`, beside the others.
                let pool = format!("{name}-replica-{}", i + 1);
                if self.postgres.contains_key(&pool) {
                    return Err(invalid(
                        format!("postgres.{name}.replicas[{i}]"),
                        r.redacted(),
                        &format!(
                            "its pool is named {pool}, as is the pool of [postgres.{pool}]: rename that pool"
                        ),
                    ));
                }
            }
        }
        #[cfg(feature = "redis")]
        if !self.redis.is_empty() {
            let url = RedisConfig::new(self.redis_url.expose());
            if let Some(reason) = redis_url_problem(&url) {
                return Err(invalid("redis_url".into(), self.redis_url.redacted(), &reason));
            }
        }
        #[cfg(feature = "redis")]
        for (name, r) in &self.redis {
            if name.is_empty() {
                return Err(invalid(
                    "redis".into(),
                    "\"\"".into(),
                    "a pool's name must not be empty",
                ));
            }
            if let Err(pool_redis::ConfigError::Invalid { setting, value, reason, .. }) =
                r.validate(name)
            {
                return Err(refused(&format!("redis.{name}"), &setting, value, &reason));
            }
        }
        for (k, v) in [
            ("admin.sample_interval", self.admin.sample_interval),
            ("admin.health_timeout", self.admin.health_timeout),
            ("admin.request_timeout", self.admin.request_timeout),
        ] {
            if let Err(reason) = pool_core::Seconds::Positive.duration(v) {
                return Err(invalid(k.to_owned(), v.to_string(), reason));
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

/// Why the URL of `config` is not a Redis URL the pools can connect with (pool-redis's
/// [`RedisConfig::validate`], as `serve` finds when it builds them); `None` when it is one.
#[cfg(feature = "redis")]
fn redis_url_problem(config: &RedisConfig) -> Option<String> {
    if !config.url.starts_with("redis://") && !config.url.starts_with("rediss://") {
        return Some("must be a redis:// URL".to_owned());
    }
    match config.clone().pool("main", PoolSettings::default()).validate() {
        Err(pool_redis::ConfigError::Url { source, .. }) => {
            Some(format!("not a valid Redis URL: {}", source.details()))
        }
        _ => None,
    }
}

/// A value as the person who wrote it would: numbers, booleans and text plain.
fn shown(value: &Value) -> String {
    use figment::value::Num;
    match value {
        Value::Num(_, n) => match *n {
            Num::F32(f) => f.to_string(),
            Num::F64(f) => f.to_string(),
            n => match (n.to_u128(), n.to_i128()) {
                (Some(u), _) => u.to_string(),
                (None, Some(i)) => i.to_string(),
                (None, None) => format!("{n:?}"),
            },
        },
        Value::Bool(_, b) => b.to_string(),
        Value::String(_, text) => text.clone(),
        other => other.to_actual().to_string(),
    }
}

/// The pool's own settings, read alone: a value refused inside the engine's settings, which
/// a backend's table embeds flattened, reaches figment as an error of the whole table
/// (`postgres.main`), since serde reads flattened keys from a copy. Reading the engine's keys of
/// that table alone finds the key (`postgres.main.pool_timeout`); any other error stays as it
/// was.
fn within_pool(figment: &Figment, e: figment::Error) -> figment::Error {
    let in_pool_table = e.path.len() == 2
        && matches!(e.path[0].as_str(), "postgres" | "redis")
        && !matches!(e.kind, figment::error::Kind::UnknownField(..));
    if !in_pool_table {
        return e;
    }
    let table = e.path.join(".");
    let Ok(Value::Dict(tag, keys)) = figment.find_value(&table) else { return e };
    let engine = engine_keys();
    let own: Dict = keys.into_iter().filter(|(k, _)| engine.contains(k)).collect();
    match PoolConfig::deserialize(&Value::Dict(tag, own)) {
        Err(mut inner) => {
            inner.path.splice(0..0, e.path.iter().cloned());
            inner
        }
        Ok(_) => e,
    }
}

/// The keys of the engine's settings ([`PoolConfig`]), as a file writes them.
pub(crate) fn engine_keys() -> Vec<String> {
    keys_of(&PoolConfig::default())
}

/// The keys `value` serializes with.
fn keys_of(value: &impl Serialize) -> Vec<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
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

fn describe(figment: &Figment, mut e: figment::Error) -> ConfigError {
    // serde reports a key unknown to a table with flattened settings in words, not as a kind.
    if let figment::error::Kind::Message(msg) = &e.kind
        && let Some(field) = msg.strip_prefix("unknown field `").and_then(|f| f.strip_suffix('`'))
    {
        e.kind = figment::error::Kind::UnknownField(field.to_owned(), &[]);
    }
    let mut key = e.path.join(".");
    // A key unknown to a table that embeds the engine's settings is found once the whole table
    // is read, so the error's path is the table's: the key is the field.
    if let figment::error::Kind::UnknownField(field, _) = &e.kind
        && e.path.last().is_none_or(|last| last != field)
    {
        key = if key.is_empty() { field.clone() } else { format!("{key}.{field}") };
    }
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
        figment::error::Kind::UnknownField(field, expected) => {
            let known: Vec<String> = match (expected.is_empty(), e.path.first().map(String::as_str))
            {
                #[cfg(feature = "postgres")]
                (true, Some("postgres")) => keys_of(&PostgresConfig::default()),
                #[cfg(feature = "redis")]
                (true, Some("redis")) => keys_of(&PoolSettings::default()),
                _ => expected.iter().map(|k| (*k).to_owned()).collect(),
            };
            let names: Vec<&str> = known.iter().map(String::as_str).collect();
            ConfigError::UnknownKey {
                suggestion: closest(field, &names).map(str::to_owned),
                known,
                key,
                source_name,
            }
        }
        figment::error::Kind::Message(msg) if !key.is_empty() => {
            let secret = ["url", "token", "replicas"].iter().any(|s| key.ends_with(s));
            let value = match figment.find_value(&key) {
                Ok(_) if secret => "***".to_owned(),
                // Text a setting could not read is shown as text (`string "soon"`).
                Ok(v @ Value::String(..)) => v.to_actual().to_string(),
                Ok(v) => shown(&v),
                Err(_) => "(unknown)".to_owned(),
            };
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

// Every backend's settings: the tests need both.
#[cfg(all(test, feature = "postgres", feature = "redis"))]
mod tests;

/// What a build leaves out of the configuration with a backend's feature.
#[cfg(test)]
mod features {
    use std::path::PathBuf;

    use super::*;

    /// A config file under `target/`, removed on drop.
    struct File(PathBuf);

    impl File {
        fn new(text: &str) -> File {
            let dir =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/admin-config-tests");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{}-{}.toml", std::process::id(), fastrand::u64(..)));
            std::fs::write(&path, text).unwrap();
            File(path)
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Every backend's key refused as a build without it refuses it: naming the key (a table's
    /// first pool) and the feature, not as an unknown key.
    #[test]
    fn a_backend_left_out_is_named_with_its_feature() {
        let left_out = BACKENDS.map(|b| Backend { built: false, ..b });
        for (text, message) in [
            (
                "[redis.cache]\npool_size = 2\n",
                "redis.cache in TOML file … configures Redis, which this build of pool-admin leaves out: build pool-admin with its `redis` feature, or remove the key",
            ),
            (
                "redis_url = \"redis://:pw@cache:6379\"\n",
                "redis_url in TOML file … configures Redis, which this build of pool-admin leaves out: build pool-admin with its `redis` feature, or remove the key",
            ),
            (
                "[admin]\nauto_tune = true\n[postgres.main]\npool_size = 2\n",
                "postgres.main in TOML file … configures PostgreSQL, which this build of pool-admin leaves out: build pool-admin with its `postgres` feature, or remove the key",
            ),
            (
                "redis = {}\n",
                "redis in TOML file … configures Redis, which this build of pool-admin leaves out: build pool-admin with its `redis` feature, or remove the key",
            ),
        ] {
            let f = File::new(text);
            let own = Figment::from(TomlFile::read(&f.0).unwrap());
            let e = not_built(&own, &left_out).unwrap_err();
            let path = f.0.display().to_string();
            assert_eq!(e.to_string().replace(&path, "…"), message, "{text}");
            assert!(matches!(e, ConfigError::NotBuilt { .. }), "{e:?}");
        }
        let f = File::new("[admin]\nauto_tune = true\n");
        let own = Figment::from(TomlFile::read(&f.0).unwrap());
        not_built(&own, &left_out).expect("a file of no backend's keys");
    }

    /// The build's own list says which backends it reads, and `load` refuses the others' keys.
    #[test]
    fn load_refuses_the_keys_of_a_backend_this_build_leaves_out() {
        for backend in BACKENDS {
            assert_eq!(
                backend.built,
                cfg!(feature = "postgres") && backend.feature == "postgres"
                    || cfg!(feature = "redis") && backend.feature == "redis",
                "{backend:?}"
            );
        }
        let f = File::new("[redis.cache]\npool_size = 2\n[postgres.main]\npool_size = 2\n");
        let loaded = AdminConfig::load(Some(&f.0), |_| None);
        match (cfg!(feature = "postgres"), cfg!(feature = "redis")) {
            (true, true) => assert!(loaded.is_ok(), "{loaded:?}"),
            // The first backend left out, in the order of `BACKENDS`.
            (false, _) => assert!(
                matches!(&loaded, Err(ConfigError::NotBuilt { key, feature: "postgres", .. }) if key == "postgres.main"),
                "{loaded:?}"
            ),
            (true, false) => assert!(
                matches!(&loaded, Err(ConfigError::NotBuilt { key, feature: "redis", .. }) if key == "redis.cache"),
                "{loaded:?}"
            ),
        }
    }

    /// A build without a backend reads none of its environment variables: `REDIS_URL` may be
    /// there for another program.
    #[test]
    fn a_backend_left_out_reads_none_of_its_variables() {
        let vars: Vec<String> = env_vars(&[]).into_iter().map(|(var, ..)| var).collect();
        assert_eq!(vars.contains(&"REDIS_URL".to_owned()), cfg!(feature = "redis"), "{vars:?}");
        assert_eq!(
            vars.contains(&"DATABASE_URL".to_owned()),
            cfg!(feature = "postgres"),
            "{vars:?}"
        );
        let loaded = AdminConfig::load(None, |var| {
            (var.starts_with("REDIS_") || var.starts_with("DATABASE_")).then(|| "x".to_owned())
        });
        if !cfg!(feature = "postgres") && !cfg!(feature = "redis") {
            assert!(loaded.is_ok(), "{loaded:?}");
        } else {
            assert!(loaded.is_err(), "a backend built reads its variables");
        }
    }
}
