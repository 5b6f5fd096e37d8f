//! [`ConfigError`] and how an error names what was wrong: the key (found again inside a table
//! that embeds the engine's settings), where its value came from, the value as written with its
//! passwords hidden, and the closest known key for a typo.

use figment::value::{Dict, Value};
use figment::{Figment, Metadata};
use pool_core::PoolConfig;
#[cfg(feature = "redis")]
use pool_redis::PoolSettings;
use serde::{Deserialize, Serialize};

use super::*;

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
    pub(super) fn redacted(self) -> ConfigError {
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
pub(super) fn redact_text(text: &str) -> String {
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

/// A value as the person who wrote it would: numbers, booleans and text plain.
pub(super) fn shown(value: &Value) -> String {
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
pub(super) fn within_pool(figment: &Figment, e: figment::Error) -> figment::Error {
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
pub(super) fn keys_of(value: &impl Serialize) -> Vec<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Where a value came from, for error messages: `TOML file <path>`, `environment variable
/// <VAR>` or [`DEFAULT_SOURCE`].
pub(super) fn source_of(metadata: &Metadata) -> String {
    match &metadata.source {
        Some(figment::Source::File(path)) => format!("TOML file {}", path.display()),
        _ => metadata.name.to_string(),
    }
}

/// Where the value of `key` (dotted) in `figment` came from; a key no source set has its
/// value from serde's defaults ([`DEFAULT_SOURCE`]).
pub(super) fn source_in(figment: &Figment, key: &str) -> String {
    figment.find_metadata(key).map_or_else(|| DEFAULT_SOURCE.to_owned(), source_of)
}

pub(super) fn describe(figment: &Figment, mut e: figment::Error) -> ConfigError {
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

pub(super) fn actual_value(key: &str, actual: &figment::error::Actual) -> String {
    let shown = actual.to_string();
    if key.ends_with("url") || key.ends_with("token") || key.ends_with("replicas") {
        "***".to_owned()
    } else {
        shown
    }
}

/// The known key closest to `typo`, if one is close enough to be what was meant: at most one
/// edit per three characters (and at least one), as rustc suggests names.
pub(super) fn closest<'a>(typo: &str, known: &[&'a str]) -> Option<&'a str> {
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
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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
