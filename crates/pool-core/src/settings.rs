//! How settings are written outside Rust (configuration files, environment variables): seconds
//! as numbers, the forms an environment variable's text may take ([`EnvForm`]), the table that
//! maps each variable to its setting ([`EnvVar`]), and [`Secret`], a value never shown in clear.
//!
//! Every backend's configuration and `pool-admin` read settings through this module, so that one
//! text means one thing everywhere: `DATABASE_POOL_RECYCLE=-1` is "never" for the library and for
//! the server alike, and `30` in a file is the same 30 seconds as in a variable.

use std::fmt;
use std::time::Duration;

use crate::config::MAX_DURATION;
use crate::{NumberError, parse_count, parse_seconds};

/// What a number of seconds means to a setting, and which numbers it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Seconds {
    /// A duration greater than zero (`pool_timeout`).
    Positive,
    /// Zero or more (`pre_ping_bypass`, where 0 means every time).
    NonNegative,
    /// Zero or less means never, or off (`pool_recycle = -1`, as in SQLAlchemy).
    ZeroIsOff,
}

impl Seconds {
    /// `secs` as this setting's duration: `None` for off ([`Seconds::ZeroIsOff`] at 0 or less).
    ///
    /// # Errors
    ///
    /// Why the number is refused, in words for the person who wrote it: not a number of the
    /// allowed sign, more than 100 years (the longest duration a pool takes), or under a
    /// nanosecond.
    pub fn duration(self, secs: f64) -> Result<Option<Duration>, &'static str> {
        let refused = match self {
            Seconds::Positive if !(secs > 0.0 && secs.is_finite()) => {
                Some("must be a number of seconds greater than zero")
            }
            Seconds::NonNegative if !(secs >= 0.0 && secs.is_finite()) => {
                Some("must be 0 (check every time) or a number of seconds")
            }
            Seconds::ZeroIsOff if !secs.is_finite() => {
                Some("must be a number of seconds (0 or less means never)")
            }
            _ => None,
        };
        if let Some(reason) = refused {
            return Err(reason);
        }
        if secs <= 0.0 {
            return Ok(match self {
                Seconds::ZeroIsOff => None,
                _ => Some(Duration::ZERO),
            });
        }
        match Duration::try_from_secs_f64(secs) {
            Ok(d) if d > MAX_DURATION => Err(TOO_LONG),
            Ok(d) if d.is_zero() => Err(
                "is less than a nanosecond (1e-9 seconds), the shortest duration the pools take",
            ),
            Ok(d) => Ok(Some(d)),
            Err(_) => Err(TOO_LONG),
        }
    }

    /// What a refusal of text adds about the numbers this setting takes.
    fn meaning(self) -> &'static str {
        match self {
            Seconds::Positive => "it must be greater than zero",
            Seconds::NonNegative => "0 means every time",
            Seconds::ZeroIsOff => "0 or less means never",
        }
    }
}

/// Why a duration above [`MAX_DURATION`] is refused.
const TOO_LONG: &str = "must be at most 100 years (3153600000 seconds)";

/// The form of an environment variable's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvForm {
    /// The text as it is (a URL, a token, an address).
    Text,
    /// Comma-separated, blanks around each item trimmed, empty items dropped.
    List,
    /// A whole number ([`parse_count`]).
    Count,
    /// Seconds ([`parse_seconds`]), of the given meaning.
    Seconds(Seconds),
}

/// An environment variable's text, read in its [`EnvForm`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EnvValue {
    /// [`EnvForm::Text`].
    Text(String),
    /// [`EnvForm::List`].
    List(Vec<String>),
    /// [`EnvForm::Count`].
    Count(usize),
    /// [`EnvForm::Seconds`]: the number as written, which the setting turns into a duration
    /// with [`Seconds::duration`] (so a file's number and a variable's go the same way).
    Seconds(f64),
}

impl EnvValue {
    /// The text of an [`EnvForm::Text`] variable.
    ///
    /// # Errors
    ///
    /// A value of another form: the table names the wrong form for its setting.
    pub fn text(self) -> Result<String, String> {
        match self {
            EnvValue::Text(text) => Ok(text),
            other => Err(format!("expected text, read {other:?}")),
        }
    }

    /// The items of an [`EnvForm::List`] variable.
    ///
    /// # Errors
    ///
    /// A value of another form.
    pub fn list(self) -> Result<Vec<String>, String> {
        match self {
            EnvValue::List(items) => Ok(items),
            other => Err(format!("expected a list, read {other:?}")),
        }
    }

    /// The number of an [`EnvForm::Count`] variable.
    ///
    /// # Errors
    ///
    /// A value of another form.
    pub fn count(self) -> Result<usize, String> {
        match self {
            EnvValue::Count(n) => Ok(n),
            other => Err(format!("expected a whole number, read {other:?}")),
        }
    }

    /// The duration of an [`EnvForm::Seconds`] variable, as a setting of meaning `kind` reads
    /// it ([`Seconds::duration`]): `None` for off.
    ///
    /// # Errors
    ///
    /// A number `kind` refuses, with its words, or a value of another form.
    pub fn duration(self, kind: Seconds) -> Result<Option<Duration>, String> {
        match self {
            EnvValue::Seconds(secs) => kind.duration(secs).map_err(str::to_owned),
            other => Err(format!("expected seconds, read {other:?}")),
        }
    }
}

impl EnvForm {
    /// `text` read in this form.
    ///
    /// # Errors
    ///
    /// Why it is not of this form, naming the forms allowed (and, for seconds, what the setting
    /// makes of a number).
    pub fn read(self, text: &str) -> Result<EnvValue, String> {
        match self {
            EnvForm::Text => Ok(EnvValue::Text(text.to_owned())),
            EnvForm::List => Ok(EnvValue::List(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            )),
            EnvForm::Count => parse_count(text).map(EnvValue::Count).map_err(|e| e.to_string()),
            EnvForm::Seconds(kind) => parse_seconds(text)
                .map(EnvValue::Seconds)
                .map_err(|e: NumberError| format!("{e}; {}", kind.meaning())),
        }
    }
}

/// One environment variable of a configuration `C`: its name, the key it sets (as a
/// configuration file writes it), the form of its text, and how it sets the key.
///
/// A backend lists its variables once (`pool_postgres::PostgresConfig::ENV`); its own
/// `from_env` and `pool-admin` both read them from that list, so a variable means the same to
/// both.
pub struct EnvVar<C> {
    /// The variable (`DATABASE_POOL_SIZE`).
    pub name: &'static str,
    /// The key it sets (`pool_size`).
    pub key: &'static str,
    /// How its text is read.
    pub form: EnvForm,
    /// Sets the key of a configuration to a value read in `form`; `Err` says why the value is
    /// refused.
    pub set: fn(&mut C, EnvValue) -> Result<(), String>,
}

impl<C> fmt::Debug for EnvVar<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvVar")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("form", &self.form)
            .finish_non_exhaustive()
    }
}

/// Why an environment variable was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for environment variable {variable} = {value:?}: {reason}")]
#[non_exhaustive]
pub struct EnvError {
    /// The variable.
    pub variable: String,
    /// Its value, passwords hidden.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

impl EnvError {
    /// The refusal of `variable`'s `value` (shown with any password hidden) for `reason`.
    pub fn new(variable: impl Into<String>, value: &str, reason: impl Into<String>) -> EnvError {
        let value = if crate::is_url(value) { crate::redact_url(value) } else { value.to_owned() };
        EnvError { variable: variable.into(), value, reason: reason.into() }
    }
}

impl EnvError {
    /// The error for a setting refused once the variables were applied, blaming the variable
    /// that set it: among `vars` (each variable's name and its setting's key, in the order to
    /// try them), the first set through `lookup` whose key is `setting` (less an index:
    /// `replicas[1]` is `replicas`), or, for a refused size, the other half of it (`pool_size`
    /// for `max_overflow`, and back). `None` when no variable set either: the setting's own
    /// value is to blame.
    pub fn blaming(
        vars: impl IntoIterator<Item = (String, &'static str)>,
        setting: &str,
        reason: &str,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Option<EnvError> {
        let vars: Vec<_> = vars.into_iter().collect();
        let key = setting.split('[').next().unwrap_or(setting);
        let partner = match key {
            "max_overflow" => Some("pool_size"),
            "pool_size" => Some("max_overflow"),
            _ => None,
        };
        std::iter::once(key).chain(partner).find_map(|key| {
            vars.iter().filter(|(_, k)| *k == key).find_map(|(name, _)| {
                lookup(name).map(|text| EnvError::new(name.as_str(), &text, reason))
            })
        })
    }
}

/// Applies the variables of `table` found through `lookup` to `config`, each under the name
/// `prefix` + its own (`""` for the unprefixed ones); unset variables leave `config` as it is.
///
/// # Errors
///
/// [`EnvError`] naming the first variable whose text is not of its form or whose value its
/// setting refuses.
pub fn apply_env<C>(
    config: &mut C,
    table: &[EnvVar<C>],
    prefix: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), EnvError> {
    for var in table {
        let name = format!("{prefix}{}", var.name);
        if let Some(text) = lookup(&name) {
            let value = var.form.read(&text).map_err(|r| EnvError::new(&name, &text, r))?;
            (var.set)(config, value).map_err(|r| EnvError::new(&name, &text, r))?;
        }
    }
    Ok(())
}

/// A value that never leaves the process in clear: a URL shows `***` for its password, anything
/// else (a token) shows `***` whole, in `Debug`, in logs, in errors and when serialized (so in
/// every API response). [`expose`](Self::expose) gives the value to the code that connects.
#[derive(Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize), serde(transparent))]
pub struct Secret(pub String);

impl Secret {
    /// The value itself, for the code that connects or compares.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value with any password replaced by `***`; a value that is not a URL is hidden
    /// whole.
    pub fn redacted(&self) -> String {
        if crate::is_url(&self.0) { crate::redact_url(&self.0) } else { "***".to_owned() }
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Durations as numbers of seconds in serde's data model, for `#[serde(with = ...)]`: one
/// module per [`Seconds`] meaning. Each reads any number (a TOML integer or float) and refuses
/// what its meaning refuses, with [`Seconds::duration`]'s words.
#[cfg(feature = "serde")]
pub mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use super::Seconds;

    fn read<'de, D: Deserializer<'de>>(d: D, kind: Seconds) -> Result<Option<Duration>, D::Error> {
        let secs = f64::deserialize(d)?;
        kind.duration(secs).map_err(D::Error::custom)
    }

    /// A duration greater than zero ([`Seconds::Positive`]).
    pub mod positive {
        use super::*;

        /// Reads seconds greater than zero.
        ///
        /// # Errors
        ///
        /// A number of seconds that is not greater than zero, or out of range.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            Ok(read(d, Seconds::Positive)?.unwrap_or_default())
        }

        /// Writes the duration's seconds.
        ///
        /// # Errors
        ///
        /// The serializer's.
        pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_f64(d.as_secs_f64())
        }
    }

    /// Zero or more seconds ([`Seconds::NonNegative`]).
    pub mod non_negative {
        use super::*;

        /// Reads seconds, zero or more.
        ///
        /// # Errors
        ///
        /// A negative number of seconds, or one out of range.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            Ok(read(d, Seconds::NonNegative)?.unwrap_or_default())
        }

        /// Writes the duration's seconds.
        ///
        /// # Errors
        ///
        /// The serializer's.
        pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_f64(d.as_secs_f64())
        }
    }

    /// Seconds where zero or less means never, or off ([`Seconds::ZeroIsOff`]); `None` is
    /// written as 0.
    pub mod zero_is_off {
        use super::*;

        /// Reads seconds, `None` for zero or less.
        ///
        /// # Errors
        ///
        /// Not a number, or a number out of range.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            read(d, Seconds::ZeroIsOff)
        }

        /// Writes the duration's seconds, 0 for `None`.
        ///
        /// # Errors
        ///
        /// The serializer's.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_f64(d.map_or(0.0, |d| d.as_secs_f64()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_setting_blames_the_variable_that_set_it_or_its_other_half() {
        let vars = || {
            [("A_POOL_SIZE", "pool_size"), ("A_POOL_OVERFLOW", "max_overflow"), ("A_URLS", "urls")]
                .map(|(name, key)| (name.to_owned(), key))
        };
        let set = |names: &'static [(&'static str, &'static str)]| {
            move |var: &str| names.iter().find(|(n, _)| *n == var).map(|(_, v)| (*v).to_owned())
        };
        let blamed = |setting, lookup| {
            EnvError::blaming(vars(), setting, "too big", &lookup).map(|e| e.to_string())
        };
        let overflow_only = set(&[("A_POOL_OVERFLOW", "9999")]);
        assert_eq!(
            blamed("max_overflow", overflow_only),
            Some(EnvError::new("A_POOL_OVERFLOW", "9999", "too big").to_string())
        );
        // The size refused as a whole, set by its other half alone.
        assert_eq!(
            blamed("pool_size", overflow_only),
            Some(EnvError::new("A_POOL_OVERFLOW", "9999", "too big").to_string())
        );
        let urls = set(&[("A_URLS", "x,y")]);
        assert_eq!(
            blamed("urls[1]", urls),
            Some(EnvError::new("A_URLS", "x,y", "too big").to_string())
        );
        assert_eq!(blamed("pool_timeout", overflow_only), None, "no variable set it");
    }

    #[test]
    fn seconds_mean_what_their_setting_says() {
        let d = Duration::from_secs_f64;
        assert_eq!(Seconds::Positive.duration(2.5), Ok(Some(d(2.5))));
        assert!(Seconds::Positive.duration(0.0).is_err());
        assert!(Seconds::Positive.duration(f64::NAN).is_err());
        assert_eq!(Seconds::NonNegative.duration(0.0), Ok(Some(Duration::ZERO)));
        assert!(Seconds::NonNegative.duration(-1.0).is_err());
        assert_eq!(Seconds::ZeroIsOff.duration(-1.0), Ok(None));
        assert_eq!(Seconds::ZeroIsOff.duration(0.0), Ok(None));
        assert!(Seconds::ZeroIsOff.duration(f64::INFINITY).is_err());
        assert_eq!(Seconds::ZeroIsOff.duration(3_153_600_000.0), Ok(Some(MAX_DURATION)));
        assert_eq!(Seconds::ZeroIsOff.duration(3_153_600_001.0), Err(TOO_LONG));
        assert_eq!(Seconds::Positive.duration(1e20), Err(TOO_LONG));
        assert!(Seconds::Positive.duration(1e-12).unwrap_err().contains("nanosecond"));
    }

    #[test]
    fn secrets_never_show_in_clear() {
        let url = Secret::from("postgres://app:hunter2@db/app");
        assert_eq!(format!("{url:?}"), "postgres://app:***@db/app");
        assert_eq!(url.expose(), "postgres://app:hunter2@db/app");
        assert_eq!(Secret::from("s3cret").redacted(), "***");
        let err = EnvError::new("DATABASE_URL", "postgres://app:hunter2@db/app", "bad");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
