//! [`RedisBuilder`]: a [`RedisInstance`] with TLS, client certificates or a Unix socket.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::{RedisInstance, Tls};
use crate::dirs::{claim_dir, remove_dir, write_private};
use crate::ports::free_port;
use crate::postgres::START_ATTEMPTS;
use crate::tls::CertFiles;

/// Starts a [`RedisInstance`] with TLS, client certificates, a Unix socket or more
/// configuration; see [`RedisInstance::builder`].
///
/// With [`tls`](Self::tls) the server listens on a TLS port only (`--port 0 --tls-port PORT`)
/// unless [`plaintext_port`](Self::plaintext_port) asks for both. The TLS files are copied into
/// the server's directory, so the originals may go while it runs and restarts.
#[derive(Debug, Clone, Default)]
#[must_use = "a builder starts nothing until `start` is called"]
pub struct RedisBuilder {
    tls: Option<(CertFiles, PathBuf)>,
    auth_client: Option<CertFiles>,
    plaintext_port: bool,
    unix_socket: bool,
    args: Vec<String>,
    conf: Option<String>,
    sentinel: bool,
}

impl RedisBuilder {
    /// Serves TLS with this server certificate and key (`--tls-cert-file`, `--tls-key-file`),
    /// trusting this CA for client certificates (`--tls-ca-cert-file`), e.g.
    /// [`TestPki::server`](crate::TestPki::server) and [`TestPki::ca_pem`](crate::TestPki::ca_pem).
    /// Clients need no certificate (`--tls-auth-clients no`) unless
    /// [`tls_auth_clients`](Self::tls_auth_clients) says so.
    pub fn tls(mut self, server: &CertFiles, ca: impl AsRef<Path>) -> Self {
        self.tls = Some((server.clone(), ca.as_ref().to_owned()));
        self
    }

    /// Refuses TLS clients without a certificate signed by the CA (`--tls-auth-clients yes`).
    /// `harness_client` is the certificate the harness's own [`RedisInstance::ping`] presents,
    /// e.g. [`TestPki::client`](crate::TestPki::client). Needs [`tls`](Self::tls).
    pub fn tls_auth_clients(mut self, harness_client: &CertFiles) -> Self {
        self.auth_client = Some(harness_client.clone());
        self
    }

    /// Keeps a plaintext port beside the TLS one: [`RedisInstance::port`] and `url` are then
    /// the plaintext port's, and [`RedisInstance::tls_port`] and `tls_url` the TLS port's.
    pub fn plaintext_port(mut self) -> Self {
        self.plaintext_port = true;
        self
    }

    /// Listens on a Unix socket as well, `<dir>/redis.sock` with mode 0700
    /// (`--unixsocket`, `--unixsocketperm 700`): see [`RedisInstance::unix_url`].
    pub fn unix_socket(mut self) -> Self {
        self.unix_socket = true;
        self
    }

    /// Adds configuration to the command line after the harness's own, kept across restarts:
    /// e.g. `["--requirepass", "pw"]`, or an ACL user
    /// `["--user", "app", "on", ">pw", "~*", "&*", "+@all"]`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|&arg| arg.to_owned()));
        self
    }

    /// Starts it with a configuration file of this text, named first on its command line
    /// (`redis-server <dir>/redis.conf ...`), written once so that the server may rewrite it.
    pub(crate) fn config_file(mut self, text: String) -> Self {
        self.conf = Some(text);
        self
    }

    /// Runs it as a sentinel (`--sentinel`); a sentinel needs a [`config_file`](Self::config_file).
    pub(crate) fn sentinel(mut self) -> Self {
        self.sentinel = true;
        self
    }

    /// Starts the server on free ports and waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// Fails as [`RedisInstance::start`] does; if [`tls_auth_clients`](Self::tls_auth_clients)
    /// lacks [`tls`](Self::tls); if a TLS file cannot be read; or, with TLS and no plaintext
    /// port, if `redis-cli` is missing (saying which Debian package to install).
    pub fn start(&self) -> anyhow::Result<RedisInstance> {
        if self.auth_client.is_some() && self.tls.is_none() {
            bail!(
                "`tls_auth_clients` needs `tls`: a server without TLS sees no client certificate"
            );
        }
        let plaintext = self.tls.is_none() || self.plaintext_port;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let Some(dir) = claim_dir(&format!("redis-{port}"))? else { continue };
            let tls = match &self.tls {
                Some((server, ca)) => {
                    let tls_port = if plaintext { free_port() } else { port };
                    match self.copy_tls(&dir, server, ca, tls_port) {
                        Ok(tls) => Some(tls),
                        Err(e) => {
                            remove_dir(&dir);
                            return Err(e);
                        }
                    }
                }
                None => None,
            };
            let socket = self.unix_socket.then(|| dir.join("redis.sock"));
            let mut redis = RedisInstance {
                dir,
                port,
                plaintext,
                tls,
                socket,
                args: self.args.clone(),
                conf: self.conf.clone(),
                sentinel: self.sentinel,
                child: None,
                detached: false,
            };
            match redis.start_again() {
                Ok(()) => return Ok(redis),
                Err(_) if redis.log().contains("Address already in use") => continue,
                Err(e) => return Err(e),
            }
        }
        bail!("redis-server could not bind a free port after {START_ATTEMPTS} attempts")
    }

    /// Copies the TLS files into `<dir>/tls/`, keys with mode 0600.
    fn copy_tls(
        &self,
        dir: &Path,
        server: &CertFiles,
        ca: &Path,
        port: u16,
    ) -> anyhow::Result<Tls> {
        let tls_dir = dir.join("tls");
        std::fs::create_dir(&tls_dir).with_context(|| format!("creating {}", tls_dir.display()))?;
        let copy = |from: &CertFiles, stem: &str| -> anyhow::Result<CertFiles> {
            let to = CertFiles {
                cert: tls_dir.join(format!("{stem}.pem")),
                key: tls_dir.join(format!("{stem}.key")),
            };
            std::fs::copy(&from.cert, &to.cert)
                .with_context(|| format!("copying {}", from.cert.display()))?;
            let key = std::fs::read(&from.key)
                .with_context(|| format!("reading {}", from.key.display()))?;
            write_private(&to.key, &key)?;
            Ok(to)
        };
        let ca_copy = tls_dir.join("ca.pem");
        std::fs::copy(ca, &ca_copy).with_context(|| format!("copying {}", ca.display()))?;
        Ok(Tls {
            port,
            server: copy(server, "server")?,
            ca: ca_copy,
            client: self.auth_client.as_ref().map(|client| copy(client, "client")).transpose()?,
        })
    }
}
