//! The server's configuration: built-in defaults, then a TOML file, then environment variables
//! (figment), with errors that name the key, where its value came from and the value.
//!
//! Each backend's part (`[postgres.*]`; `[redis.*]` and `redis_url`) is read only in a build with
//! its feature (`postgres`, `redis`); a build without it refuses a file that sets it, naming the
//! key and the feature, and reads none of its environment variables.

#[cfg(any(feature = "postgres", feature = "redis"))]
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::value::{Dict, Value};
pub use pool_core::Secret;
#[cfg(feature = "postgres")]
pub use pool_postgres::PostgresConfig;
#[cfg(feature = "redis")]
use pool_redis::{PoolSettings, RedisConfig};
use serde::{Deserialize, Serialize};

mod errors;
mod sources;

pub use self::errors::ConfigError;
pub(crate) use self::errors::engine_keys;
use self::errors::*;
use self::sources::*;

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
    /// Time between the optimizer's stats samples \[10 s\].
    #[serde(with = "pool_core::seconds::positive")]
    pub sample_interval: Duration,
    /// How long one pool's active health check may take \[2 s\].
    #[serde(with = "pool_core::seconds::positive")]
    pub health_timeout: Duration,
    /// Time a client has to send a request's headers, and a request to be answered, body
    /// included \[30 s\]; an idle kept-alive connection is closed after it too, and it is the
    /// shutdown's grace period. Greater than `health_timeout`.
    #[serde(with = "pool_core::seconds::positive")]
    pub request_timeout: Duration,
    /// HTTP clients served at once, 1 to 65536 \[128\]; more wait to be accepted. Also read
    /// under its former name, `max_connections`.
    #[serde(alias = "max_connections")]
    pub max_clients: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
            token: None,
            metrics_open: false,
            dashboard: true,
            auto_tune: false,
            sample_interval: Duration::from_secs(10),
            health_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            max_clients: 128,
        }
    }
}

/// The most HTTP clients the admin server may serve at once (`max_clients`).
const MAX_CLIENTS: usize = 65_536;

impl ServerConfig {
    /// Checks the settings together, the one place the server's rules are said: durations
    /// greater than zero and at most 100 years, `request_timeout` greater than `health_timeout`,
    /// and `max_clients` from 1 to 65536. [`AdminConfig::load`] and the
    /// [`ServerBuilder`](crate::ServerBuilder) both apply it.
    ///
    /// # Errors
    ///
    /// [`ServeError::Invalid`](crate::ServeError::Invalid) naming the first setting refused, its
    /// value (durations in seconds) and why.
    pub fn check(&self) -> Result<(), crate::ServeError> {
        let invalid = |setting, value: String, reason: String| {
            Err(crate::ServeError::Invalid { setting, value, reason })
        };
        for (setting, d) in [
            ("sample_interval", self.sample_interval),
            ("health_timeout", self.health_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if let Err(reason) = pool_core::Seconds::Positive.duration(d.as_secs_f64()) {
                return invalid(setting, seconds_shown(d), reason.to_owned());
            }
        }
        if self.request_timeout <= self.health_timeout {
            return invalid(
                "request_timeout",
                seconds_shown(self.request_timeout),
                format!(
                    "must be greater than health_timeout ({}), or health checks time out as requests",
                    seconds_shown(self.health_timeout)
                ),
            );
        }
        if !(1..=MAX_CLIENTS).contains(&self.max_clients) {
            return invalid(
                "max_clients",
                self.max_clients.to_string(),
                "must be from 1 to 65536 (with 0 no client is ever served)".to_owned(),
            );
        }
        Ok(())
    }
}

/// A duration as a setting's seconds (`2.5`, `30`).
fn seconds_shown(d: Duration) -> String {
    d.as_secs_f64().to_string()
}

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
            let secret =
                ["url", "token", "replicas", "primaries"].iter().any(|s| lookup.ends_with(s));
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
            // With the URL: TLS settings need `rediss://`, a password comes from one place.
            let pool = RedisConfig::new(self.redis_url.expose()).pool(name, r.clone());
            if let Err(pool_redis::ConfigError::Invalid { setting, value, reason, .. }) =
                pool.validate()
            {
                return Err(refused(&format!("redis.{name}"), &setting, value, &reason));
            }
        }
        if let Err(crate::ServeError::Invalid { setting, value, mut reason }) = self.admin.check() {
            let key = format!("admin.{setting}");
            if setting == "request_timeout" {
                reason += &also(&key, "admin.health_timeout", "admin.health_timeout");
            }
            return Err(invalid(key, value, &reason));
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
    let schemes =
        ["redis://", "rediss://", "redis+unix://", "redis-sentinel://", "redis-cluster://"];
    if !schemes.iter().any(|s| config.url.starts_with(s)) {
        return Some(
            "must be a redis://, rediss://, redis+unix://, redis-sentinel:// or redis-cluster:// URL"
                .to_owned(),
        );
    }
    match config.clone().pool("main", PoolSettings::default()).validate() {
        Err(pool_redis::ConfigError::Url { source, .. }) => {
            Some(format!("not a valid Redis URL: {}", source.details()))
        }
        _ => None,
    }
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
