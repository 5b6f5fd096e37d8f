//! [`PgBuilder`]: a [`PgInstance`] with TLS, client certificates or passwords, and [`PgHba`],
//! how it authenticates.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::{PgInstance, append, bin_dir, quote_ident, quote_literal};
use crate::dirs::{chown_to_postgres, write_private};
use crate::tls::CertFiles;

/// How a [`PgInstance`] authenticates connections over TCP (its `pg_hba.conf`).
///
/// Whatever the choice, two lines stay `trust`: the Unix socket
/// (`local all all trust`), through which [`PgInstance::psql`] logs in as `postgres`, and
/// replication connections from 127.0.0.1 (`host replication all 127.0.0.1/32 trust`), through
/// which [`PgInstance::start_replica`] clones the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgHba {
    /// `trust` for every connection, with TLS or without: what [`PgInstance::start`] sets.
    #[default]
    Trust,
    /// `hostssl all all 127.0.0.1/32 cert`: only TLS connections that present a client
    /// certificate signed by the [`ssl_ca`](PgBuilder::ssl_ca) CA, logged in as the role its
    /// common name names. A connection without TLS, or without a certificate, is refused.
    /// Needs [`ssl`](PgBuilder::ssl) and [`ssl_ca`](PgBuilder::ssl_ca).
    ClientCert,
    /// `host all all 127.0.0.1/32 scram-sha-256` with `password_encryption = scram-sha-256`:
    /// every TCP connection, with TLS or without, logs in with its role's password. The roles
    /// come from [`role_with_password`](PgBuilder::role_with_password); `postgres` has none,
    /// so it logs in over the Unix socket only.
    ScramSha256,
}

/// A login role the builder creates once the server runs.
#[derive(Clone)]
struct Role {
    name: String,
    password: Option<String>,
}

/// Starts a [`PgInstance`] with TLS, another [`PgHba`] or login roles; see
/// [`PgInstance::builder`].
///
/// The TLS files are copied into the data directory (owned by the server's user, the key with
/// mode 0600), so the server needs nothing outside it: the originals may go, restarts and
/// replicas ([`PgInstance::start_replica`] copies them with the data) find their own.
///
/// Its `Debug` output names the roles and hides their passwords.
#[derive(Clone, Default)]
#[must_use = "a builder starts nothing until `start` is called"]
pub struct PgBuilder {
    ssl: Option<CertFiles>,
    ssl_ca: Option<PathBuf>,
    hba: PgHba,
    roles: Vec<Role>,
}

impl PgBuilder {
    /// Turns TLS on (`ssl = on`) with this server certificate and key (`ssl_cert_file`,
    /// `ssl_key_file`), e.g. [`TestPki::server`](crate::TestPki::server). Clients may still
    /// connect without TLS unless the [`PgHba`] is [`ClientCert`](PgHba::ClientCert).
    pub fn ssl(mut self, server: &CertFiles) -> Self {
        self.ssl = Some(server.clone());
        self
    }

    /// Has the server ask clients for a certificate and verify it against this CA
    /// (`ssl_ca_file`), e.g. [`TestPki::ca_pem`](crate::TestPki::ca_pem). A client that
    /// presents none is still let in unless the [`PgHba`] is [`ClientCert`](PgHba::ClientCert);
    /// one that presents a certificate the CA did not sign is refused in the handshake.
    pub fn ssl_ca(mut self, ca: impl AsRef<Path>) -> Self {
        self.ssl_ca = Some(ca.as_ref().to_owned());
        self
    }

    /// Sets how connections over TCP authenticate ([`PgHba::Trust`] by default).
    pub fn hba(mut self, hba: PgHba) -> Self {
        self.hba = hba;
        self
    }

    /// Creates a login role without a password (`CREATE ROLE <name> LOGIN`), e.g. one that
    /// logs in with a client certificate issued for it.
    pub fn role(mut self, name: &str) -> Self {
        self.roles.push(Role { name: name.to_owned(), password: None });
        self
    }

    /// Creates a login role with a password (`CREATE ROLE <name> LOGIN PASSWORD ...`), sent to
    /// `psql` on its standard input and shown in no error. [`PgInstance::set_password`]
    /// changes it later.
    pub fn role_with_password(mut self, name: &str, password: &str) -> Self {
        self.roles.push(Role { name: name.to_owned(), password: Some(password.to_owned()) });
        self
    }

    /// Creates a fresh cluster with these settings, starts it, waits until it accepts
    /// connections, and creates the roles.
    ///
    /// # Errors
    ///
    /// Fails as [`PgInstance::start`] does; if [`PgHba::ClientCert`] lacks
    /// [`ssl`](Self::ssl) or [`ssl_ca`](Self::ssl_ca), or `ssl_ca` is set without `ssl`; if a
    /// TLS file cannot be read (the server's log says what it thinks of one it read); or if a
    /// role cannot be created.
    pub fn start(&self) -> anyhow::Result<PgInstance> {
        if self.ssl_ca.is_some() && self.ssl.is_none() {
            bail!("`ssl_ca` needs `ssl`: a server without TLS asks no client for a certificate");
        }
        if self.hba == PgHba::ClientCert && (self.ssl.is_none() || self.ssl_ca.is_none()) {
            bail!("`PgHba::ClientCert` needs `ssl` and `ssl_ca`, to verify client certificates");
        }
        let pg = PgInstance::launch(bin_dir()?, |pg| {
            pg.initdb()?;
            self.configure(pg)?;
            pg.start_server()
        })?;
        for role in &self.roles {
            let mut sql = format!("CREATE ROLE {} LOGIN", quote_ident(&role.name));
            match &role.password {
                Some(password) => {
                    let _ = write!(sql, " PASSWORD {}", quote_literal(password));
                    pg.psql_secret(&sql, password)?;
                }
                None => {
                    pg.psql(&sql)?;
                }
            }
        }
        Ok(pg)
    }

    /// Writes the TLS files, the settings and `pg_hba.conf` into the fresh data directory.
    fn configure(&self, pg: &PgInstance) -> anyhow::Result<()> {
        let data = pg.data_dir();
        let mut conf = String::from("\n# pool-harness: TLS and authentication\n");
        if let Some(server) = &self.ssl {
            // Relative paths are read from the data directory.
            copy_in(&server.cert, &data.join("harness-server.pem"), false)?;
            copy_in(&server.key, &data.join("harness-server.key"), true)?;
            conf.push_str(
                "ssl = on\n\
                 ssl_cert_file = 'harness-server.pem'\n\
                 ssl_key_file = 'harness-server.key'\n",
            );
        }
        if let Some(ca) = &self.ssl_ca {
            copy_in(ca, &data.join("harness-ca.pem"), false)?;
            conf.push_str("ssl_ca_file = 'harness-ca.pem'\n");
        }
        if self.hba == PgHba::ScramSha256 {
            conf.push_str("password_encryption = 'scram-sha-256'\n");
        }
        append(&data.join("postgresql.conf"), &conf)?;

        let tcp = match self.hba {
            // `initdb -A trust` wrote `trust` lines for every connection.
            PgHba::Trust => return Ok(()),
            PgHba::ClientCert => "hostssl all all 127.0.0.1/32 cert",
            PgHba::ScramSha256 => "host all all 127.0.0.1/32 scram-sha-256",
        };
        let hba = data.join("pg_hba.conf");
        let text = format!(
            "# pool-harness: {:?}\n\
             local all all trust\n\
             host replication all 127.0.0.1/32 trust\n\
             {tcp}\n",
            self.hba
        );
        std::fs::write(&hba, text).with_context(|| format!("writing {}", hba.display()))
    }
}

impl fmt::Debug for PgBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roles: Vec<String> = self
            .roles
            .iter()
            .map(|role| match role.password {
                Some(_) => format!("{} (with a password)", role.name),
                None => role.name.clone(),
            })
            .collect();
        f.debug_struct("PgBuilder")
            .field("ssl", &self.ssl)
            .field("ssl_ca", &self.ssl_ca)
            .field("hba", &self.hba)
            .field("roles", &roles)
            .finish()
    }
}

/// Copies `from` to `to` in a data directory, handing the copy to the server's user; a key
/// gets mode 0600.
fn copy_in(from: &Path, to: &Path, private: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    if private {
        write_private(to, &bytes)?;
    } else {
        std::fs::write(to, &bytes).with_context(|| format!("writing {}", to.display()))?;
    }
    chown_to_postgres(to)
}
