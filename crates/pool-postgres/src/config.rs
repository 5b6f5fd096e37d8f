//! [`PostgresConfig`]: one cluster's settings in one place (its URLs, TLS, credentials, what
//! each new connection runs, the engine's [`PoolConfig`], how returned connections are reset,
//! how reads are routed), their defaults, their validation, and the environment variables that
//! set them ([`PostgresConfig::ENV`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pool_core::{
    CredentialProvider, EnvError, EnvForm, EnvVar, FileCredentials, PoolConfig, Seconds, Secret,
};

use crate::cluster::PgCluster;
use crate::connection::ResetOnReturn;
use crate::error::{ClusterBuildError, ConfigError};
use crate::manager::PgManager;
use crate::tls::{Origin, SslMode, TlsSettings};

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
    /// Further candidate primaries (`DATABASE_PRIMARY_URLS`, comma-separated) \[none\]: with
    /// any, the primary pool's connects try `url`'s server and these, the last one found
    /// writable first, and keep only a writable session, so writes follow a failover by
    /// themselves (see [`PgManager::primaries`]). Only each URL's host and port are used; its
    /// user and database must be `url`'s. `url` may name several hosts itself, as libpq's
    /// `postgres://a:5432,b:5432/app?target_session_attrs=read-write`. A replica may be a
    /// candidate primary too: promoted, it leaves the read rotation.
    pub primaries: Vec<Secret>,
    /// `sslmode` for every connection of the cluster (`DATABASE_SSL_MODE`): `disable`,
    /// `prefer`, `require`, `verify-ca` or `verify-full` \[unset: the URL's `sslmode`, else
    /// `PGSSLMODE`, else `prefer`\]. Over a Unix socket no TLS is used, as in libpq.
    pub ssl_mode: Option<SslMode>,
    /// `sslrootcert`: a PEM file of the CA certificates that sign the server's certificate (a
    /// managed database's CA bundle), trusted besides the public roots built in
    /// (`DATABASE_SSL_ROOT_CERT`) \[unset: the URL's, else `PGSSLROOTCERT`\]. With
    /// `require`, a root certificate makes connects check the certificate as `verify-ca` does,
    /// as in libpq.
    pub ssl_root_cert: Option<PathBuf>,
    /// `sslcert`: a PEM file of the client certificate, for servers that authenticate clients
    /// by certificate (`DATABASE_SSL_CERT`) \[unset: the URL's, else `PGSSLCERT`\]; with
    /// `ssl_key`.
    pub ssl_cert: Option<PathBuf>,
    /// `sslkey`: a PEM file of the client certificate's private key (`DATABASE_SSL_KEY`)
    /// \[unset: the URL's, else `PGSSLKEY`\].
    pub ssl_key: Option<PathBuf>,
    /// A file holding the password, read when a connection is opened and read again whenever
    /// it changes, in place of the URL's password (`DATABASE_PASSWORD_FILE`) \[unset\]: how
    /// Vault agent and Kubernetes secrets rotate passwords. Line breaks at its end are dropped.
    pub password_file: Option<PathBuf>,
    /// SQL statements run on every new connection (`["SET application_name = 'billing'"]`),
    /// and again after each session reset in the reset's round trip, so what they set survives
    /// it \[none\]. A statement that fails makes the connect fail. Not read from the
    /// environment (statements hold commas).
    pub connect_statements: Vec<String>,
    /// Server settings sent when a connection starts (`{ statement_timeout = "5s" }`, as
    /// libpq's `options=-c statement_timeout=5s`): the session's defaults, which the session
    /// reset returns to, so they cost nothing per return \[none; `PGOPTIONS` and the URL's
    /// `options` apply too\].
    pub server_settings: BTreeMap<String, String>,
    /// The longest a statement may run (`DATABASE_STATEMENT_TIMEOUT`, seconds) \[`None`, 0 in a
    /// file or variable: no bound\]: the server's `statement_timeout` on every connection, and
    /// a bound on each query's wait on the client (the timeout plus a grace of up to a second),
    /// past which the query fails and its connection is closed, so that a frozen server cannot
    /// hold a caller for ever (see [`PgManager::statement_timeout`]). At most 2147483647 ms,
    /// PostgreSQL's limit; not with `server_settings.statement_timeout` as well.
    #[cfg_attr(feature = "serde", serde(with = "pool_core::seconds::zero_is_off"))]
    pub statement_timeout: Option<Duration>,
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
            primaries: Vec::new(),
            ssl_mode: None,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
            password_file: None,
            connect_statements: Vec::new(),
            server_settings: BTreeMap::new(),
            statement_timeout: None,
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
        EnvVar {
            name: "PRIMARY_URLS",
            key: "primaries",
            form: EnvForm::List,
            set: |c, v| {
                c.primaries = v.list()?.into_iter().map(Secret).collect();
                Ok(())
            },
        },
        EnvVar {
            name: "SSL_MODE",
            key: "ssl_mode",
            form: EnvForm::Text,
            set: |c, v| {
                c.ssl_mode =
                    Some(v.text()?.parse().map_err(|e: crate::SslModeError| e.to_string())?);
                Ok(())
            },
        },
        EnvVar {
            name: "SSL_ROOT_CERT",
            key: "ssl_root_cert",
            form: EnvForm::Text,
            set: |c, v| {
                c.ssl_root_cert = Some(v.text()?.into());
                Ok(())
            },
        },
        EnvVar {
            name: "SSL_CERT",
            key: "ssl_cert",
            form: EnvForm::Text,
            set: |c, v| {
                c.ssl_cert = Some(v.text()?.into());
                Ok(())
            },
        },
        EnvVar {
            name: "SSL_KEY",
            key: "ssl_key",
            form: EnvForm::Text,
            set: |c, v| {
                c.ssl_key = Some(v.text()?.into());
                Ok(())
            },
        },
        EnvVar {
            name: "PASSWORD_FILE",
            key: "password_file",
            form: EnvForm::Text,
            set: |c, v| {
                c.password_file = Some(v.text()?.into());
                Ok(())
            },
        },
        EnvVar {
            name: "STATEMENT_TIMEOUT",
            key: "statement_timeout",
            form: EnvForm::Seconds(Seconds::ZeroIsOff),
            set: |c, v| {
                c.statement_timeout = v.duration(Seconds::ZeroIsOff)?;
                Ok(())
            },
        },
    ];

    /// Every variable a cluster reads, `(variable, key, form)`: `DATABASE_URL`,
    /// `DATABASE_REPLICA_URLS`, `DATABASE_PRIMARY_URLS`, `DATABASE_SSL_MODE`, `DATABASE_SSL_ROOT_CERT`,
    /// `DATABASE_SSL_CERT`, `DATABASE_SSL_KEY`, `DATABASE_PASSWORD_FILE`,
    /// `DATABASE_STATEMENT_TIMEOUT`, then the engine's
    /// `DATABASE_POOL_SIZE`, `DATABASE_POOL_OVERFLOW`, `DATABASE_POOL_TIMEOUT` and
    /// `DATABASE_POOL_RECYCLE`.
    ///
    /// libpq's own variables (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`,
    /// `PGPASSWORD`, `PGOPTIONS`...) are not in this list: sqlx reads them from the process's
    /// environment when it parses a URL, as libpq does, beneath the URL's own parameters, and
    /// the settings above override both.
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

    /// Checks every setting: the URLs parse, the certificate and key files they and the TLS
    /// settings name can be read and hold PEM of their kind (a client certificate with its
    /// key), the password file can be read and is not empty, the server settings' names are
    /// setting names, the engine accepts [`pool`](Self::pool), and the routing durations are
    /// greater than zero and at most 100 years.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first setting refused (`url`, `replicas[1]`,
    /// `ssl_root_cert`, `password_file`, `pool_size`, `replica_timeout`...), its value with
    /// passwords hidden, and why; a file named by a URL's parameter or by libpq's variables
    /// (`PGSSLROOTCERT`) is refused as the URL's, saying which.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let urls = std::iter::once(("url".to_owned(), &self.url))
            .chain(self.replicas.iter().enumerate().map(|(i, u)| (format!("replicas[{i}]"), u)))
            .chain(self.primaries.iter().enumerate().map(|(i, u)| (format!("primaries[{i}]"), u)));
        for (setting, url) in urls {
            if let Some(reason) = url_problem(url) {
                return Err(invalid(&setting, url, reason));
            }
            let manager = PgManager::from_url(url.expose())
                .map_err(|e| invalid(&setting, url, e.source.to_string()))?
                .tls(self.tls());
            if let Some(problem) = manager.tls_state().file_problem() {
                return Err(match problem.file.origin {
                    Origin::Setting => ConfigError::Invalid {
                        setting: problem.which.key().to_owned(),
                        value: problem.file.value.clone(),
                        reason: problem.reason.clone(),
                    },
                    Origin::Url | Origin::Env => invalid(&setting, url, problem.to_string()),
                });
            }
        }
        if let Ok(primary) = PgManager::from_url(self.url.expose()) {
            let whose = |m: &PgManager| {
                let o = m.options();
                (o.get_username().to_owned(), o.get_database().map(str::to_owned))
            };
            for (i, url) in self.primaries.iter().enumerate() {
                let Ok(candidate) = PgManager::from_url(url.expose()) else { continue };
                if whose(&candidate) != whose(&primary) {
                    return Err(invalid(
                        &format!("primaries[{i}]"),
                        url,
                        "a candidate primary has url's user and database: only its host and \
                         port are used"
                            .to_owned(),
                    ));
                }
            }
        }
        if let Some(path) = &self.password_file
            && let Err(e) = FileCredentials::new(path).read()
        {
            return Err(ConfigError::Invalid {
                setting: "password_file".to_owned(),
                value: path.display().to_string(),
                reason: e.to_string(),
            });
        }
        for (i, statement) in self.connect_statements.iter().enumerate() {
            if statement.trim().trim_end_matches(';').trim().is_empty() {
                return Err(ConfigError::Invalid {
                    setting: format!("connect_statements[{i}]"),
                    value: format!("{statement:?}"),
                    reason: "must be a SQL statement, not blank".to_owned(),
                });
            }
        }
        for (name, value) in &self.server_settings {
            let setting_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !setting_name {
                return Err(ConfigError::Invalid {
                    setting: format!("server_settings.{name}"),
                    value: format!("{value:?}"),
                    reason: "a server setting's name is letters, digits, _ and . (statement_timeout, myext.option)".to_owned(),
                });
            }
        }
        if let Some(timeout) = self.statement_timeout {
            if self.server_settings.contains_key("statement_timeout") {
                return Err(ConfigError::Invalid {
                    setting: "statement_timeout".to_owned(),
                    value: format!("{timeout:?}"),
                    reason: "server_settings.statement_timeout is set too: set one of them"
                        .to_owned(),
                });
            }
            if timeout > MAX_STATEMENT_TIMEOUT {
                return Err(ConfigError::Invalid {
                    setting: "statement_timeout".to_owned(),
                    value: format!("{timeout:?}"),
                    reason: "must be at most 2147483647 ms (about 24.8 days), PostgreSQL's limit"
                        .to_owned(),
                });
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
        // One provider for the cluster's pools, so the file is read once per change.
        let credentials: Option<Arc<dyn CredentialProvider>> = self
            .password_file
            .as_ref()
            .map(|path| Arc::new(FileCredentials::new(path)) as Arc<dyn CredentialProvider>);
        let manager = |url: &Secret| {
            let mut manager = PgManager::from_url(url.expose())
                .map_err(|e| ClusterBuildError::Config(invalid("url", url, e.source.to_string())))?
                .tls(self.tls())
                .server_settings(&self.server_settings)
                .connect_statements(&self.connect_statements)
                .statement_timeout(self.statement_timeout)
                .reset_on_return(self.reset_on_return);
            if let Some(provider) = &credentials {
                manager = manager.with_shared_credentials(Arc::clone(provider));
            }
            Ok::<_, ClusterBuildError>(manager)
        };
        let mut primary = manager(&self.url)?;
        if !self.primaries.is_empty() {
            let mut others = Vec::new();
            for url in &self.primaries {
                others.extend(manager(url)?.hosts());
            }
            primary = primary.primaries(others);
        }
        let mut builder = PgCluster::builder(name, primary)
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

impl PostgresConfig {
    /// The TLS settings of the keys `ssl_mode`, `ssl_root_cert`, `ssl_cert` and `ssl_key`.
    pub fn tls(&self) -> TlsSettings {
        TlsSettings {
            mode: self.ssl_mode,
            root_cert: self.ssl_root_cert.clone(),
            client_cert: self.ssl_cert.clone(),
            client_key: self.ssl_key.clone(),
        }
    }
}

/// PostgreSQL's largest `statement_timeout`: `i32::MAX` milliseconds.
const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

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

    #[test]
    fn tls_and_credential_variables_set_their_keys_and_bad_files_name_the_key() {
        let dir = std::env::temp_dir().join(format!("pool-postgres-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let missing = dir.join("missing.pem").display().to_string();
        let c = with(&[
            ("DATABASE_SSL_MODE", "verify-full"),
            ("DATABASE_PASSWORD_FILE", password.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(
            (c.ssl_mode, c.password_file.as_deref()),
            (Some(crate::SslMode::VerifyFull), Some(&*password))
        );
        for (variable, value, says) in [
            ("DATABASE_SSL_MODE", "allow", "sqlx does not implement allow"),
            ("DATABASE_SSL_MODE", "on", "expected disable, prefer"),
            ("DATABASE_SSL_ROOT_CERT", missing.as_str(), "cannot read it"),
            ("DATABASE_SSL_ROOT_CERT", not_pem.to_str().unwrap(), "holds no PEM certificate"),
            ("DATABASE_SSL_KEY", not_pem.to_str().unwrap(), "needs its certificate"),
            ("DATABASE_PASSWORD_FILE", missing.as_str(), "cannot read the password file"),
        ] {
            let err = with(&[("DATABASE_SSL_MODE", "require"), (variable, value)]);
            let err = match (variable, err) {
                ("DATABASE_SSL_MODE", _) => with(&[(variable, value)]).unwrap_err(),
                (_, e) => e.unwrap_err(),
            };
            assert_eq!(err.variable, variable, "{err}");
            assert!(err.to_string().contains(says), "{variable}: {err}");
        }
        // A file named in the URL is the URL's fault, and says where it came from.
        let url = format!("postgres://app:hunter2@db/app?sslmode=verify-ca&sslrootcert={missing}");
        let err = with(&[("DATABASE_URL", &url)]).unwrap_err().to_string();
        assert!(
            err.contains("DATABASE_URL") && err.contains("(from the URL): cannot read it"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        // Without TLS, no certificate is read.
        with(&[("DATABASE_SSL_MODE", "disable"), ("DATABASE_SSL_ROOT_CERT", &missing)]).unwrap();
    }

    #[test]
    fn connect_statements_and_server_settings_are_checked() {
        let mut c = PostgresConfig {
            connect_statements: vec!["SET application_name = 'x'".into(), " ; ".into()],
            ..PostgresConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("invalid setting connect_statements[1]"), "{err}");
        c.connect_statements.pop();
        c.server_settings.insert("statement_timeout".into(), "5s".into());
        c.validate().unwrap();
        c.server_settings.insert("bad name".into(), "1".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("invalid setting server_settings.bad name"), "{err}");
    }

    #[test]
    fn candidate_primaries_are_read_and_must_share_the_user_and_database() {
        let c = with(&[
            ("DATABASE_URL", "postgres://app:pw@a:5432/app"),
            ("DATABASE_PRIMARY_URLS", "postgres://app:pw@b:5433/app,postgres://app@c/app"),
        ])
        .unwrap();
        assert_eq!(c.primaries.len(), 2);
        let err = with(&[
            ("DATABASE_URL", "postgres://app:hunter2@a/app"),
            ("DATABASE_PRIMARY_URLS", "postgres://other:hunter2@b/app"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "DATABASE_PRIMARY_URLS", "{err}");
        assert!(err.to_string().contains("user and database"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err =
            with(&[("DATABASE_PRIMARY_URLS", "postgres://u:hunter2@b:port/app")]).unwrap_err();
        assert_eq!(err.variable, "DATABASE_PRIMARY_URLS", "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_statement_timeout_is_read_in_seconds_and_checked() {
        let c = with(&[("DATABASE_STATEMENT_TIMEOUT", "2.5")]).unwrap();
        assert_eq!(c.statement_timeout, Some(Duration::from_millis(2500)));
        for off in ["0", "-1"] {
            let c = with(&[("DATABASE_STATEMENT_TIMEOUT", off)]).unwrap();
            assert_eq!(c.statement_timeout, None, "{off:?} is off");
        }
        let err = with(&[("DATABASE_STATEMENT_TIMEOUT", "30s")]).unwrap_err();
        assert_eq!(err.variable, "DATABASE_STATEMENT_TIMEOUT", "{err}");
        let err = with(&[("DATABASE_STATEMENT_TIMEOUT", "3000000")]).unwrap_err();
        assert!(err.to_string().contains("PostgreSQL's limit"), "{err}");
        let mut c = PostgresConfig {
            statement_timeout: Some(Duration::from_secs(5)),
            ..PostgresConfig::default()
        };
        c.validate().unwrap();
        c.server_settings.insert("statement_timeout".into(), "5s".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("invalid setting statement_timeout"), "{err}");
    }

    /// A file's table and the variables mean the same: the numbers go through the same forms.
    #[cfg(feature = "serde")]
    #[test]
    fn a_table_reads_the_engines_keys_beside_the_clusters_own() {
        let c: PostgresConfig = serde_json::from_str(
            r#"{"url": "postgres://app@db/app", "pool_size": 4, "pool_recycle": -1,
                "replica_timeout": 0.5, "reset_on_return": "transaction",
                "ssl_mode": "verify-full", "ssl_root_cert": "/etc/ssl/ca.pem",
                "connect_statements": ["SET application_name = 'x'"],
                "server_settings": {"statement_timeout": "5s"}}"#,
        )
        .unwrap();
        assert_eq!(c.ssl_mode, Some(crate::SslMode::VerifyFull));
        assert_eq!(c.tls().root_cert.as_deref(), Some(std::path::Path::new("/etc/ssl/ca.pem")));
        assert_eq!(c.connect_statements.len(), 1);
        assert_eq!(c.server_settings["statement_timeout"], "5s");
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
            (r#"{"ssl_mode": "verify_full"}"#, "verify-full"),
        ] {
            let err = serde_json::from_str::<PostgresConfig>(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
