//! Pool settings from the environment: `DATABASE_POOL_SIZE`, `DATABASE_POOL_OVERFLOW`,
//! `DATABASE_POOL_TIMEOUT`, `DATABASE_POOL_RECYCLE`.

use std::time::Duration;

use pool_core::{BuildError, PoolConfig};

use crate::error::EnvError;

/// `pool_size`, a whole number ([`pool_core::parse_count`]'s forms: `10`, `+10`).
pub const DATABASE_POOL_SIZE: &str = "DATABASE_POOL_SIZE";
/// `max_overflow`, a whole number.
pub const DATABASE_POOL_OVERFLOW: &str = "DATABASE_POOL_OVERFLOW";
/// `pool_timeout`, in seconds ([`pool_core::parse_seconds`]'s forms: `30`, `2.5`, `1e3`).
pub const DATABASE_POOL_TIMEOUT: &str = "DATABASE_POOL_TIMEOUT";
/// `pool_recycle`, in seconds; 0 or less (`-1`, as in SQLAlchemy) means never.
pub const DATABASE_POOL_RECYCLE: &str = "DATABASE_POOL_RECYCLE";

/// `base` with the settings found in the process's environment variables
/// ([`DATABASE_POOL_SIZE`], [`DATABASE_POOL_OVERFLOW`], [`DATABASE_POOL_TIMEOUT`],
/// [`DATABASE_POOL_RECYCLE`]); unset variables leave `base` as it is.
///
/// # Errors
///
/// [`EnvError`] naming the first variable whose value does not parse (or is not UTF-8), or
/// whose value the pool would refuse (a zero `DATABASE_POOL_SIZE`...).
///
/// # Examples
///
/// ```
/// let config = pool_postgres::config_from_env(pool_core::PoolConfig::default())?;
/// # Ok::<_, pool_postgres::EnvError>(())
/// ```
pub fn config_from_env(base: PoolConfig) -> Result<PoolConfig, EnvError> {
    apply(base, |name| match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(raw)) => Err(EnvError {
            variable: name,
            value: raw.to_string_lossy().into_owned(),
            reason: "must be valid UTF-8".to_owned(),
        }),
    })
}

/// [`config_from_env`] with the variables given as `(name, value)` pairs instead of read from
/// the process (for other configuration sources, and for tests).
///
/// # Errors
///
/// As for [`config_from_env`].
///
/// # Examples
///
/// ```
/// use pool_postgres::config_from_vars;
///
/// let config = config_from_vars(Default::default(), [("DATABASE_POOL_SIZE", "5")])?;
/// assert_eq!(config.pool_size, 5);
/// let err = config_from_vars(Default::default(), [("DATABASE_POOL_TIMEOUT", "soon")]).unwrap_err();
/// assert_eq!(err.variable, "DATABASE_POOL_TIMEOUT");
/// # Ok::<_, pool_postgres::EnvError>(())
/// ```
pub fn config_from_vars<'a>(
    base: PoolConfig,
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<PoolConfig, EnvError> {
    let vars: Vec<(&str, &str)> = vars.into_iter().collect();
    apply(base, |name| {
        Ok(vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
    })
}

fn apply(
    mut config: PoolConfig,
    lookup: impl Fn(&'static str) -> Result<Option<String>, EnvError>,
) -> Result<PoolConfig, EnvError> {
    let mut set: Vec<(&str, &'static str, String)> = Vec::new();
    if let Some(v) = lookup(DATABASE_POOL_SIZE)? {
        config.pool_size = count(DATABASE_POOL_SIZE, &v)?;
        set.push(("pool_size", DATABASE_POOL_SIZE, v));
    }
    if let Some(v) = lookup(DATABASE_POOL_OVERFLOW)? {
        config.max_overflow = count(DATABASE_POOL_OVERFLOW, &v)?;
        set.push(("max_overflow", DATABASE_POOL_OVERFLOW, v));
    }
    if let Some(v) = lookup(DATABASE_POOL_TIMEOUT)? {
        let secs = seconds(DATABASE_POOL_TIMEOUT, &v, "it must be greater than zero")?;
        if secs <= 0.0 {
            return Err(EnvError {
                variable: DATABASE_POOL_TIMEOUT,
                value: v,
                reason: "must be a number of seconds greater than zero".to_owned(),
            });
        }
        config.pool_timeout = duration(DATABASE_POOL_TIMEOUT, &v, secs)?;
        set.push(("pool_timeout", DATABASE_POOL_TIMEOUT, v));
    }
    if let Some(v) = lookup(DATABASE_POOL_RECYCLE)? {
        // SQLAlchemy's `-1`, or any number up to 0, means never (as `pool-admin` reads it).
        let secs = seconds(DATABASE_POOL_RECYCLE, &v, "0 or less means never")?;
        config.pool_recycle =
            if secs <= 0.0 { None } else { Some(duration(DATABASE_POOL_RECYCLE, &v, secs)?) };
        set.push(("pool_recycle", DATABASE_POOL_RECYCLE, v));
    }
    // A value that parses but that the pool would refuse is still the variable's fault.
    // The size limit is on `pool_size + max_overflow`, reported as one of the two: the other's
    // variable alone can break it.
    if let Err(BuildError::Invalid { setting, reason, .. }) = config.validate() {
        let named = |name: &str| set.iter().position(|(s, _, _)| *s == name);
        let other = match setting {
            "pool_size" => Some("max_overflow"),
            "max_overflow" => Some("pool_size"),
            _ => None,
        };
        let blamed = named(setting).or_else(|| other.and_then(named));
        if let Some(i) = blamed {
            let (_, variable, value) = set.swap_remove(i);
            return Err(EnvError { variable, value, reason: reason.to_owned() });
        }
    }
    Ok(config)
}

/// `value` as a whole number, in the one form every reader of the toolkit's variables takes
/// ([`pool_core::parse_count`]).
fn count(variable: &'static str, value: &str) -> Result<usize, EnvError> {
    pool_core::parse_count(value).map_err(|e| EnvError {
        variable,
        value: value.to_owned(),
        reason: e.to_string(),
    })
}

/// `value` as seconds, in the one form every reader of the toolkit's variables takes
/// ([`pool_core::parse_seconds`]); a refusal says the forms and then `meaning`, what the
/// variable makes of a number (`0 or less means never`).
fn seconds(variable: &'static str, value: &str, meaning: &str) -> Result<f64, EnvError> {
    pool_core::parse_seconds(value).map_err(|e| EnvError {
        variable,
        value: value.to_owned(),
        reason: format!("{e}; {meaning}"),
    })
}

/// `secs`, greater than zero, as a duration: refused when it converts to none (under a
/// nanosecond) or overflows one; the pool's own check refuses more than 100 years.
fn duration(variable: &'static str, value: &str, secs: f64) -> Result<Duration, EnvError> {
    Duration::try_from_secs_f64(secs).ok().filter(|d| !d.is_zero()).ok_or_else(|| EnvError {
        variable,
        value: value.to_owned(),
        reason: pool_core::NumberError::SecondsOutOfRange.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pool_core::PoolConfig;

    use super::config_from_vars;

    #[test]
    fn variables_set_their_settings() {
        let c = config_from_vars(
            PoolConfig::default(),
            [
                ("DATABASE_POOL_SIZE", "5"),
                ("DATABASE_POOL_OVERFLOW", "0"),
                ("DATABASE_POOL_TIMEOUT", "2.5"),
                ("DATABASE_POOL_RECYCLE", "600"),
            ],
        )
        .unwrap();
        assert_eq!(c.pool_size, 5);
        assert_eq!(c.max_overflow, 0);
        assert_eq!(c.pool_timeout, Duration::from_millis(2500));
        assert_eq!(c.pool_recycle, Some(Duration::from_secs(600)));
        let c = config_from_vars(PoolConfig::default(), [("DATABASE_POOL_TIMEOUT", "1e3")]);
        assert_eq!(c.unwrap().pool_timeout, Duration::from_secs(1000), "as TOML reads 1e3");
        for never in ["-1", "0", " -5 ", "0.0", "-1e3"] {
            let c = config_from_vars(PoolConfig::default(), [("DATABASE_POOL_RECYCLE", never)]);
            assert_eq!(c.unwrap().pool_recycle, None, "{never:?} means never");
        }
        assert_eq!(config_from_vars(PoolConfig::default(), []).unwrap(), PoolConfig::default());
    }

    #[test]
    fn the_size_limit_blames_the_overflow_when_it_is_set_and_the_size_alone_otherwise() {
        let both = [("DATABASE_POOL_SIZE", "10"), ("DATABASE_POOL_OVERFLOW", "200000")];
        let err = config_from_vars(PoolConfig::default(), both).unwrap_err();
        assert_eq!(err.variable, "DATABASE_POOL_OVERFLOW", "{err}");
        let size = [("DATABASE_POOL_SIZE", "200000")];
        let err = config_from_vars(PoolConfig::default(), size).unwrap_err();
        assert_eq!(err.variable, "DATABASE_POOL_SIZE", "{err}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            ("DATABASE_POOL_SIZE", "ten"),
            ("DATABASE_POOL_SIZE", "-3"),
            ("DATABASE_POOL_SIZE", "0"),
            ("DATABASE_POOL_SIZE", ""),
            ("DATABASE_POOL_OVERFLOW", "1.5"),
            ("DATABASE_POOL_TIMEOUT", "30s"),
            ("DATABASE_POOL_TIMEOUT", "0"),
            ("DATABASE_POOL_TIMEOUT", "-1"),
            ("DATABASE_POOL_TIMEOUT", "NaN"),
            ("DATABASE_POOL_TIMEOUT", "1e300"),
            ("DATABASE_POOL_RECYCLE", "an hour"),
            // Words `f64` parses, which no reader of the variables takes.
            ("DATABASE_POOL_TIMEOUT", "inf"),
            ("DATABASE_POOL_RECYCLE", "-inf"),
            ("DATABASE_POOL_RECYCLE", "NaN"),
            // Values that parse but that the pool refuses.
            ("DATABASE_POOL_SIZE", "200000"),
            ("DATABASE_POOL_TIMEOUT", "1e11"),
            ("DATABASE_POOL_RECYCLE", "99999999999"),
        ];
        for (variable, value) in cases {
            let err = config_from_vars(PoolConfig::default(), [(variable, value)]).unwrap_err();
            assert_eq!(err.variable, variable, "{variable}={value:?}");
            assert!(err.to_string().contains(variable), "{err}");
        }
    }
}
