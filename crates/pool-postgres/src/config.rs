//! [`PostgresConfig`]: one cluster's settings in one place (its URLs, the engine's
//! [`PoolConfig`], how returned connections are reset, how reads are routed), their defaults,
//! their validation, and the environment variables that set them ([`PostgresConfig::ENV`]).

use std::time::Duration;

use pool_core::{EnvError, EnvForm, EnvVar, PoolConfig, Secret};

use crate::cluster::PgCluster;
use crate::connection::ResetOnReturn;
use crate::error::{ClusterBuildError, ConfigError};
use crate::manager::PgManager;

/// The settings of one PostgreSQL cluster: a primary, its read replicas, and the pools on them.
///
/// [`Default`] is a primary at `postgres://postgres@127.0.0.1:5432/postgres` with no replica and
/// [`PoolConfig::default`]'s pools. With the `serde` feature it reads and writes a configuration
/// file's table, the engine's keys beside this type's own (`pool_size = 5`,
/// `replica_timeout = 2`), durations as seconds; a key left out keeps its default.
///
/// # Examples
///
/// ```
/// use pool_postgres::PostgresConfig;
///
/// let mut config = PostgresConfig::default().with_env_from(|var| match var {
///     "DATABASE_URL" => Some("postgres://app@db/app".to_owned()),
///     "DATABASE_POOL_SIZE" => Some("5".to_owned()),
///     _ => None,
/// })?;
/// assert_eq!(config.pool.pool_size, 5);
/// config.pool.max_overflow = 0;
/// config.validate()?;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The primary's URL (`DATABASE_URL`).
    pub url: Secret,
    /// The read replicas' URLs (`DATABASE_REPLICA_URLS`, comma-separated); their pools are named
    /// `<name>-replica-1`, `-2`...
    pub replicas: Vec<Secret>,
    /// The engine's settings, for the primary's pool and each replica's (`DATABASE_POOL_SIZE`,
    /// `DATABASE_POOL_OVERFLOW`, `DATABASE_POOL_TIMEOUT`, `DATABASE_POOL_RECYCLE`).
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub pool: PoolConfig,
    /// What a returned connection is cleared of before the next user gets it
    /// \[[`ResetOnReturn::Session`]\].
    pub reset_on_return: ResetOnReturn,
    /// Replay lag past which a replica is skipped for plain reads \[10 s\]; `None` (0 in a file)
    /// never skips for lag.
    #[cfg_attr(feature = "serde", serde(with = "pool_core::seconds::zero_is_off"))]
    pub max_replica_lag: Option<Duration>,
    /// How long a replica that failed to connect or answer stays out of rotation before it is
    /// tried again \[30 s\].
    #[cfg_attr(feature = "serde", serde(with = "pool_core::seconds::positive"))]
    pub replica_ban: Duration,
    /// How long a read waits for replicas' connections, in all, before it goes to the primary,
    /// and how long a causal read's check of a replica's replay position may take \[2 s\].
    #[cfg_attr(feature = "serde", serde(with = "pool_core::seconds::positive"))]
    pub replica_timeout: Duration,
    /// Period of the lag probe \[1 s\]; `None` (0 in a file) turns it off: no lag awareness, and
    /// banned replicas are retried by reads once their ban ends.
    #[cfg_attr(feature = "serde", serde(with = "pool_core::seconds::zero_is_off"))]
    pub lag_probe_interval: Option<Duration>,
    /// Connections this application's pools may open on each of the cluster's servers, for tools
    /// that size pools (pool-admin's optimizer and resizes) \[unset: read from each server,
    /// `max_connections` less its reserved connections\]. The cluster itself does not use it.
    pub connection_budget: Option<usize>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: Secret::from("postgres://postgres@127.0.0.1:5432/postgres"),
            replicas: Vec::new(),
            pool: PoolConfig::default(),
            reset_on_return: ResetOnReturn::Session,
            max_replica_lag: Some(Duration::from_secs(10)),
            replica_ban: Duration::from_secs(30),
            replica_timeout: Duration::from_secs(2),
            lag_probe_interval: Some(Duration::from_secs(1)),
            connection_budget: None,
        }
    }
}

impl PostgresConfig {
    /// The prefix of a cluster's environment variables.
    pub const ENV_PREFIX: &'static str = "DATABASE_";

    /// The cluster's own environment variables, named after [`ENV_PREFIX`](Self::ENV_PREFIX)
    /// (`URL` is `DATABASE_URL`); the engine's are [`PoolConfig::ENV`] under the same prefix.
    /// [`env_vars`](Self::env_vars) lists both, as [`with_env_from`](Self::with_env_from) and
    /// pool-admin read them.
    pub const ENV: &'static [EnvVar<PostgresConfig>] = &[
        EnvVar {
            name: "URL",
            key: "url",
            form: EnvForm::Text,
            set: |c, v| {
                c.url = Secret(v.text()?);
                Ok(())
            },
        },
        EnvVar {
            name: "REPLICA_URLS",
            key: "replicas",
            form: EnvForm::List,
            set: |c, v| {
                c.replicas = v.list()?.into_iter().map(Secret).collect();
                Ok(())
            },
        },
    ];

    /// Every variable a cluster reads, `(variable, key, form)`: `DATABASE_URL`,
    /// `DATABASE_REPLICA_URLS`, then the engine's `DATABASE_POOL_SIZE`, `DATABASE_POOL_OVERFLOW`,
    /// `DATABASE_POOL_TIMEOUT` and `DATABASE_POOL_RECYCLE`.
    pub fn env_vars() -> impl Iterator<Item = (String, &'static str, EnvForm)> {
        let own = Self::ENV.iter().map(|v| (v.name, v.key, v.form));
        let engine = PoolConfig::ENV.iter().map(|v| (v.name, v.key, v.form));
        own.chain(engine)
            .map(|(name, key, form)| (format!("{}{name}", Self::ENV_PREFIX), key, form))
    }

    /// The [default](Self::default) configuration with the process's environment variables
    /// applied ([`with_env_from`](Self::with_env_from)).
    ///
    /// # Errors
    ///
    /// As for [`with_env_from`](Self::with_env_from).
    pub fn from_env() -> Result<Self, EnvError> {
        PostgresConfig::default().with_env_from(|var| std::env::var(var).ok())
    }

    /// These settings with the variables of [`env_vars`](Self::env_vars) found through `lookup` applied,
    /// then [validated](Self::validate); unset variables leave a setting as it is.
    ///
    /// # Errors
    ///
    /// [`EnvError`] naming the first variable whose text does not parse, or whose value the
    /// settings refuse (a zero `DATABASE_POOL_SIZE`, a `DATABASE_POOL_OVERFLOW` that takes the
    /// pool over its limit); a setting refused that no variable set is named as the setting.
    pub fn with_env_from(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, EnvError> {
        pool_core::apply_env(&mut self, Self::ENV, Self::ENV_PREFIX, &lookup)?;
        pool_core::apply_env(&mut self.pool, PoolConfig::ENV, Self::ENV_PREFIX, &lookup)?;
        if let Err(ConfigError::Invalid { setting, value, reason }) = self.validate() {
            let vars = Self::env_vars().map(|(name, key, _)| (name, key));
            return Err(EnvError::blaming(vars, &setting, &reason, &lookup)
                .unwrap_or_else(|| EnvError::new(setting, &value, reason)));
        }
        Ok(self)
    }

    /// Checks every setting: the URLs parse, the engine accepts [`pool`](Self::pool), and the
    /// routing durations are greater than zero and at most 100 years.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first setting refused (`url`, `replicas[1]`,
    /// `pool_size`, `replica_timeout`...), its value with passwords hidden, and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        url_problem(&self.url).map_or(Ok(()), |reason| Err(invalid("url", &self.url, reason)))?;
        for (i, url) in self.replicas.iter().enumerate() {
            if let Some(reason) = url_problem(url) {
                return Err(invalid(&format!("replicas[{i}]"), url, reason));
            }
        }
        if let Err(pool_core::BuildError::Invalid { setting, value, reason }) = self.pool.validate()
        {
            return Err(ConfigError::Invalid { setting: setting.to_owned(), value, reason });
        }
        routing_problem(
            self.replica_ban,
            self.replica_timeout,
            self.max_replica_lag,
            self.lag_probe_interval,
        )
        .map_or(Ok(()), |(setting, value, reason)| {
            Err(ConfigError::Invalid {
                setting: setting.to_owned(),
                value,
                reason: reason.to_owned(),
            })
        })
    }

    /// Builds the cluster `name` these settings describe: a pool on the primary and one on each
    /// replica, all with [`pool`](Self::pool)'s settings, started as
    /// [`ClusterBuilder::build`](crate::ClusterBuilder::build) starts them.
    ///
    /// # Errors
    ///
    /// [`ClusterBuildError::Config`] for settings [`validate`](Self::validate) refuses, and what
    /// [`ClusterBuilder::build`](crate::ClusterBuilder::build) returns.
    pub fn build(&self, name: impl Into<String>) -> Result<PgCluster, ClusterBuildError> {
        self.validate()?;
        let manager = |url: &Secret| {
            PgManager::from_url(url.expose())
                .map(|m| m.reset_on_return(self.reset_on_return))
                .map_err(|e| ClusterBuildError::Config(invalid("url", url, e.source.to_string())))
        };
        let mut builder = PgCluster::builder(name, manager(&self.url)?)
            .config(self.pool.clone())
            .replica_ban(self.replica_ban)
            .replica_timeout(self.replica_timeout)
            .max_replica_lag(self.max_replica_lag)
            .lag_probe_interval(self.lag_probe_interval);
        for url in &self.replicas {
            builder = builder.replica(manager(url)?);
        }
        builder.build()
    }
}

fn invalid(setting: &str, url: &Secret, reason: String) -> ConfigError {
    ConfigError::Invalid { setting: setting.to_owned(), value: url.redacted(), reason }
}

/// Why `url` is not a PostgreSQL URL the pools can connect with; `None` when it is one.
fn url_problem(url: &Secret) -> Option<String> {
    let url = url.expose();
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Some("must be a postgres:// URL".to_owned());
    }
    let e = PgManager::from_url(url).err()?;
    // sqlx's words without its "error with configuration" wrapper.
    let words = match &e.source {
        sqlx::Error::Configuration(inner) => inner.to_string(),
        other => other.to_string(),
    };
    Some(format!("not a valid PostgreSQL URL: {words}"))
}

/// The first routing setting out of range, its value and why: durations must be greater than
/// zero and at most 100 years. One check for [`PostgresConfig::validate`] and
/// [`ClusterBuilder::build`](crate::ClusterBuilder::build).
pub(crate) fn routing_problem(
    replica_ban: Duration,
    replica_timeout: Duration,
    max_replica_lag: Option<Duration>,
    lag_probe_interval: Option<Duration>,
) -> Option<(&'static str, String, &'static str)> {
    [
        ("replica_ban", Some(replica_ban)),
        ("replica_timeout", Some(replica_timeout)),
        ("max_replica_lag", max_replica_lag),
        ("lag_probe_interval", lag_probe_interval),
    ]
    .into_iter()
    .find_map(|(setting, value)| match value {
        Some(v) if v.is_zero() => Some((setting, format!("{v:?}"), "must be greater than zero")),
        Some(v) if v > pool_core::MAX_DURATION => {
            Some((setting, format!("{v:?}"), "must be at most 100 years"))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::PostgresConfig;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    fn with(pairs: &[(&str, &str)]) -> Result<PostgresConfig, pool_core::EnvError> {
        PostgresConfig::default().with_env_from(vars(pairs))
    }

    #[test]
    fn variables_set_their_settings() {
        let c = with(&[
            ("DATABASE_URL", "postgres://app@db/app"),
            ("DATABASE_REPLICA_URLS", " postgres://r1/app, ,postgres://r2/app"),
            ("DATABASE_POOL_SIZE", "5"),
            ("DATABASE_POOL_OVERFLOW", "0"),
            ("DATABASE_POOL_TIMEOUT", "2.5"),
            ("DATABASE_POOL_RECYCLE", "600"),
        ])
        .unwrap();
        assert_eq!(c.url.expose(), "postgres://app@db/app");
        assert_eq!(c.replicas.len(), 2);
        assert_eq!(c.pool.pool_size, 5);
        assert_eq!(c.pool.max_overflow, 0);
        assert_eq!(c.pool.pool_timeout, Duration::from_millis(2500));
        assert_eq!(c.pool.pool_recycle, Some(Duration::from_secs(600)));
        let c = with(&[("DATABASE_POOL_TIMEOUT", "1e3")]);
        assert_eq!(c.unwrap().pool.pool_timeout, Duration::from_secs(1000), "as TOML reads 1e3");
        for never in ["-1", "0", " -5 ", "0.0", "-1e3"] {
            let c = with(&[("DATABASE_POOL_RECYCLE", never)]);
            assert_eq!(c.unwrap().pool.pool_recycle, None, "{never:?} means never");
        }
        assert_eq!(with(&[]).unwrap(), PostgresConfig::default());
    }

    #[test]
    fn the_size_limit_blames_the_overflow_when_it_is_set_and_the_size_alone_otherwise() {
        let err = with(&[("DATABASE_POOL_SIZE", "10"), ("DATABASE_POOL_OVERFLOW", "200000")])
            .unwrap_err();
        assert_eq!(err.variable, "DATABASE_POOL_OVERFLOW", "{err}");
        let err = with(&[("DATABASE_POOL_SIZE", "200000")]).unwrap_err();
        assert_eq!(err.variable, "DATABASE_POOL_SIZE", "{err}");
    }

    #[test]
    fn bad_values_name_their_variable_without_passwords() {
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
            ("DATABASE_URL", "postgres://app:hunter2@db:port/app"),
            ("DATABASE_REPLICA_URLS", "postgres://r1/app,mysql://app:hunter2@r2/app"),
        ];
        for (variable, value) in cases {
            let err = with(&[(variable, value)]).unwrap_err();
            assert_eq!(err.variable, variable, "{variable}={value:?}");
            let shown = err.to_string();
            assert!(shown.contains(variable) && !shown.contains("hunter2"), "{shown}");
        }
    }

    /// A file's table and the variables mean the same: the numbers go through the same forms.
    #[cfg(feature = "serde")]
    #[test]
    fn a_table_reads_the_engines_keys_beside_the_clusters_own() {
        let c: PostgresConfig = serde_json::from_str(
            r#"{"url": "postgres://app@db/app", "pool_size": 4, "pool_recycle": -1,
                "replica_timeout": 0.5, "reset_on_return": "transaction"}"#,
        )
        .unwrap();
        assert_eq!((c.pool.pool_size, c.pool.pool_recycle), (4, None));
        assert_eq!(c.replica_timeout, Duration::from_millis(500));
        assert_eq!(c.reset_on_return, crate::ResetOnReturn::Transaction);
        let back: PostgresConfig =
            serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c, "what is written reads back the same");
        for (text, says) in [
            (r#"{"pool_sise": 4}"#, "pool_sise"),
            (r#"{"pool_timeout": 0}"#, "greater than zero"),
            (r#"{"replica_ban": -1}"#, "greater than zero"),
        ] {
            let err = serde_json::from_str::<PostgresConfig>(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
