//! Where settings come from, as figment providers that errors can name: the built-in defaults,
//! the TOML file (read once, its parser's copy of a line never shown), and each environment
//! variable of the server's and the backends' lists; and the refusal of a backend's keys in a
//! build without its feature.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use pool_core::{EnvForm, EnvValue};
#[cfg(feature = "redis")]
use pool_redis::RedisConfig;

use super::*;

/// Where a value came from when neither the file nor the environment set it.
pub(super) const DEFAULT_SOURCE: &str = "the default";

/// A backend's top-level keys in the file, as [`not_built`] checks them: the key, the backend's
/// name, the feature that reads it, and whether this build has that feature.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backend {
    pub(super) key: &'static str,
    pub(super) name: &'static str,
    pub(super) feature: &'static str,
    pub(super) built: bool,
}

/// The keys each backend's feature reads, and whether this build reads them.
pub(super) const BACKENDS: [Backend; 3] = [
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
pub(super) fn not_built(own: &Figment, backends: &[Backend]) -> Result<(), ConfigError> {
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
pub(super) const SERVER_ENV: &[(&str, &str)] =
    &[("POOL_ADMIN_LISTEN", "admin.listen"), ("POOL_ADMIN_TOKEN", "admin.token")];

/// Every environment variable that may set a key, with the key (dotted) and the form of its
/// text, in the order they apply (later wins): the server's, `REDIS_URL`, the PostgreSQL cluster
/// `main`'s, then each Redis pool's, unprefixed for `main` before prefixed. `redis_pools` are
/// the Redis pools the file and the defaults name. A backend left out of the build has none.
#[cfg_attr(not(feature = "redis"), allow(unused_variables))]
pub(super) fn env_vars(redis_pools: &[String]) -> Vec<(String, String, EnvForm)> {
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
pub(super) fn redis_env_vars(redis_pools: &[String]) -> Vec<(String, String, EnvForm)> {
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
pub(super) fn env_value(value: EnvValue) -> Value {
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
pub(super) struct TomlFile {
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
    pub(super) fn read(path: &Path) -> Result<TomlFile, ConfigError> {
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
        let mut data = Toml::string(&self.text).data().map_err(|e| match &e.kind {
            figment::error::Kind::Message(msg) => figment::Error::from(self.unshown(msg)),
            _ => e,
        })?;
        for dict in data.values_mut() {
            former_names(dict).map_err(figment::Error::from)?;
        }
        Ok(data)
    }
}

/// Reads settings written under their former names as their current ones:
/// `admin.max_connections` is `admin.max_clients`. (serde's alias alone would see both names
/// once the defaults, which use the current one, are merged in.)
fn former_names(dict: &mut Dict) -> Result<(), String> {
    let Some(Value::Dict(_, admin)) = dict.get_mut("admin") else { return Ok(()) };
    if let Some(value) = admin.remove("max_connections") {
        if admin.contains_key("max_clients") {
            return Err(
                "admin.max_connections is the former name of admin.max_clients: set only one"
                    .to_owned(),
            );
        }
        admin.insert("max_clients".to_owned(), value);
    }
    Ok(())
}

impl TomlFile {
    /// The TOML parser's `message` without its copy of the line it could not parse, which may
    /// hold a password that, the line being broken, cannot be told from the rest: where it is
    /// (line and column) and what is wrong stay, with the key whose value it is when the line
    /// starts with one.
    pub(super) fn unshown(&self, message: &str) -> String {
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
    pub(super) fn key_of_value_at(&self, at: &str) -> Option<&str> {
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
pub(super) struct Defaults(pub(super) Value);

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
pub(super) struct EnvVar {
    pub(super) var: String,
    pub(super) key: String,
    pub(super) value: Value,
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
