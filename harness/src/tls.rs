//! [`TestPki`]: a throwaway certificate authority with server and client certificates, as PEM
//! files for the TLS servers the harness starts and for the clients that connect to them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

use crate::dirs::{chown_to_postgres, claim_dir, give_to_postgres, remove_dir, write_private};

/// The role named by the common name of [`TestPki::client_cert`]: the harness's superuser.
pub const CLIENT_ROLE: &str = "postgres";

/// A certificate and its private key, as two PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate (`-----BEGIN CERTIFICATE-----`), readable by all.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, `-----BEGIN PRIVATE KEY-----`), mode 0600.
    pub key: PathBuf,
}

/// A test PKI: a CA, certificates it signed for servers and clients, and a second, unrelated CA.
///
/// Everything is generated afresh (ECDSA P-256 keys) and written as PEM files into a directory
/// of its own, `<target>/harness/pki-<pid>-<n>`, removed on drop:
///
/// | method | file | what it is |
/// | --- | --- | --- |
/// | [`ca_pem`](Self::ca_pem) | `ca.pem` | the CA that signed every certificate below |
/// | [`server`](Self::server) | `server.pem`, `server.key` | a server certificate for `localhost` and `127.0.0.1` |
/// | [`expired_server`](Self::expired_server) | `expired-server.pem`, `.key` | the same names, valid only in the year 2000 |
/// | [`client`](Self::client) | `client-postgres.pem`, `.key` | a client certificate whose common name is [`CLIENT_ROLE`] |
/// | [`other_ca_pem`](Self::other_ca_pem) | `other-ca.pem` | a CA that signed none of them: a client that trusts only it sees an unknown CA |
///
/// [`issue_server`](Self::issue_server) signs a server certificate for other names (a host name
/// mismatch), [`issue_client`](Self::issue_client) a client certificate for another role, and
/// [`issue_untrusted_client`](Self::issue_untrusted_client) one that the other CA signed.
///
/// Every key file has mode 0600. When this process runs as root, the server keys belong to the
/// `postgres` system user, since PostgreSQL runs as that user and reads a key only if it owns it
/// (the client keys stay with this process's user, as libpq requires of a client's key). The
/// certificates are signed for the server and client roles of TLS (extended key usage
/// `serverAuth`, `clientAuth`), and every leaf certificate names its CA's key (authority key
/// identifier).
///
/// Its `Debug` output shows the directory, never a key.
///
/// # Examples
///
/// ```no_run
/// let pki = pool_harness::TestPki::generate()?;
/// let client = pki.issue_client("app")?;
/// let params = format!(
///     "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
///     pki.ca_pem().display(),
///     client.cert.display(),
///     client.key.display()
/// );
/// # let _ = params;
/// # anyhow::Ok(())
/// ```
pub struct TestPki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    other_ca: Issuer<'static, KeyPair>,
    ca_pem: PathBuf,
    other_ca_pem: PathBuf,
    server: CertFiles,
    expired_server: CertFiles,
    client: CertFiles,
    /// How many certificates the `issue_*` methods signed, to name their files.
    issued: AtomicUsize,
}

impl TestPki {
    /// Generates the CAs and certificates and writes them into a new directory.
    ///
    /// # Errors
    ///
    /// Fails if a file cannot be written, or (as root) handed to the `postgres` user.
    pub fn generate() -> anyhow::Result<Self> {
        let dir = claim_pki_dir()?;
        Self::generate_in(dir.clone()).inspect_err(|_| remove_dir(&dir))
    }

    fn generate_in(dir: PathBuf) -> anyhow::Result<Self> {
        // PostgreSQL, running as `postgres`, may read its key straight from here.
        give_to_postgres(&dir)?;
        let (ca, ca_pem) = new_ca("pool-harness test CA", &dir.join("ca.pem"))?;
        let (other_ca, other_ca_pem) =
            new_ca("pool-harness unrelated CA", &dir.join("other-ca.pem"))?;
        let names = ["localhost", "127.0.0.1"];
        let server = sign(&ca, &Leaf::Server { names: &names, expired: false }, &dir, "server")?;
        let expired_server =
            sign(&ca, &Leaf::Server { names: &names, expired: true }, &dir, "expired-server")?;
        let client =
            sign(&ca, &Leaf::Client { role: CLIENT_ROLE }, &dir, &format!("client-{CLIENT_ROLE}"))?;
        Ok(TestPki {
            dir,
            ca,
            other_ca,
            ca_pem,
            other_ca_pem,
            server,
            expired_server,
            client,
            issued: AtomicUsize::new(0),
        })
    }

    /// Returns the directory holding every file of this PKI.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the CA certificate (`ca.pem`) that signed every certificate of this PKI except
    /// those of [`issue_untrusted_client`](Self::issue_untrusted_client): a client's root
    /// certificate (`sslrootcert`, `--cacert`), a server's `ssl_ca_file`.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// Returns the certificate of a second CA (`other-ca.pem`) that signed nothing the servers
    /// present: a client that trusts only it fails to verify them (an unknown CA).
    pub fn other_ca_pem(&self) -> &Path {
        &self.other_ca_pem
    }

    /// Returns the server certificate and key, for the names `localhost` and `127.0.0.1`
    /// (subject alternative names; the common name is `localhost`).
    pub fn server(&self) -> &CertFiles {
        &self.server
    }

    /// Returns the server certificate of [`server`](Self::server).
    pub fn server_cert(&self) -> &Path {
        &self.server.cert
    }

    /// Returns the server key of [`server`](Self::server).
    pub fn server_key(&self) -> &Path {
        &self.server.key
    }

    /// Returns a server certificate and key for `localhost` and `127.0.0.1` that expired long
    /// ago (valid from 2000-01-01 to 2000-12-31).
    pub fn expired_server(&self) -> &CertFiles {
        &self.expired_server
    }

    /// Returns the client certificate and key whose common name is [`CLIENT_ROLE`]
    /// (`postgres`): PostgreSQL's `cert` authentication logs it in as that role.
    pub fn client(&self) -> &CertFiles {
        &self.client
    }

    /// Returns the client certificate of [`client`](Self::client).
    pub fn client_cert(&self) -> &Path {
        &self.client.cert
    }

    /// Returns the client key of [`client`](Self::client).
    pub fn client_key(&self) -> &Path {
        &self.client.key
    }

    /// Signs a new server certificate for `names` (host names or IP addresses, the first also
    /// its common name) with the CA, written as `server-<n>.pem` and `.key`; for instance one
    /// for `db.invalid`, which a client connecting to `localhost` with host name verification
    /// refuses.
    ///
    /// # Errors
    ///
    /// Fails if `names` is empty or holds a name that is neither a DNS name nor an IP address,
    /// or if a file cannot be written.
    pub fn issue_server(&self, names: &[&str]) -> anyhow::Result<CertFiles> {
        if names.is_empty() {
            bail!("a server certificate needs at least one name");
        }
        let stem = format!("server-{}", self.next());
        sign(&self.ca, &Leaf::Server { names, expired: false }, &self.dir, &stem)
    }

    /// Signs a new client certificate whose common name is `role` with the CA, written as
    /// `client-<n>.pem` and `.key`.
    ///
    /// # Errors
    ///
    /// Fails if a file cannot be written.
    pub fn issue_client(&self, role: &str) -> anyhow::Result<CertFiles> {
        let stem = format!("client-{}", self.next());
        sign(&self.ca, &Leaf::Client { role }, &self.dir, &stem)
    }

    /// Signs a new client certificate whose common name is `role` with the other CA, which
    /// no server of the harness trusts, written as `untrusted-client-<n>.pem` and `.key`.
    ///
    /// # Errors
    ///
    /// Fails if a file cannot be written.
    pub fn issue_untrusted_client(&self, role: &str) -> anyhow::Result<CertFiles> {
        let stem = format!("untrusted-client-{}", self.next());
        sign(&self.other_ca, &Leaf::Client { role }, &self.dir, &stem)
    }

    fn next(&self) -> usize {
        self.issued.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        remove_dir(&self.dir);
    }
}

/// What a leaf certificate is for.
enum Leaf<'a> {
    /// A server's, for these names; valid for ever, or only in the year 2000.
    Server { names: &'a [&'a str], expired: bool },
    /// A client's, whose common name is this role.
    Client { role: &'a str },
}

/// Generates a self-signed CA and writes its certificate to `path`, returning it as an issuer.
fn new_ca(name: &str, path: &Path) -> anyhow::Result<(Issuer<'static, KeyPair>, PathBuf)> {
    let key = KeyPair::generate().context("generating a CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::OrganizationName, "pool-harness");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).with_context(|| format!("signing the CA {name:?}"))?;
    std::fs::write(path, cert.pem()).with_context(|| format!("writing {}", path.display()))?;
    Ok((Issuer::new(params, key), path.to_owned()))
}

/// Signs a leaf certificate with `issuer` and writes it as `<stem>.pem` and its key as
/// `<stem>.key` into `dir`.
fn sign(
    issuer: &Issuer<'_, KeyPair>,
    leaf: &Leaf<'_>,
    dir: &Path,
    stem: &str,
) -> anyhow::Result<CertFiles> {
    let key = KeyPair::generate().context("generating a key")?;
    let mut params = match *leaf {
        Leaf::Server { names, expired } => {
            let mut params = CertificateParams::new(
                names.iter().map(|&name| name.to_owned()).collect::<Vec<_>>(),
            )
            .with_context(|| format!("{names:?} are not all DNS names or IP addresses"))?;
            params.distinguished_name.remove(DnType::CommonName);
            params.distinguished_name.push(DnType::CommonName, names[0]);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            if expired {
                params.not_before = date_time_ymd(2000, 1, 1);
                params.not_after = date_time_ymd(2000, 12, 31);
            }
            params
        }
        Leaf::Client { role } => {
            let mut params = CertificateParams::default();
            params.distinguished_name.remove(DnType::CommonName);
            params.distinguished_name.push(DnType::CommonName, role);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params
        }
    };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer).with_context(|| format!("signing {stem}"))?;

    let files =
        CertFiles { cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}.key")) };
    std::fs::write(&files.cert, cert.pem())
        .with_context(|| format!("writing {}", files.cert.display()))?;
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    if let Leaf::Server { .. } = leaf {
        chown_to_postgres(&files.key)?;
    }
    Ok(files)
}

/// Claims `<target>/harness/pki-<pid>-<n>`, a fresh directory this process owns.
fn claim_pki_dir() -> anyhow::Result<PathBuf> {
    static CLAIMED: AtomicUsize = AtomicUsize::new(0);
    loop {
        let n = CLAIMED.fetch_add(1, Ordering::Relaxed);
        if let Some(dir) = claim_dir(&format!("pki-{}-{n}", std::process::id()))? {
            return Ok(dir);
        }
    }
}
