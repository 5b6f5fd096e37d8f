//! TLS for PostgreSQL connections: [`SslMode`], [`TlsSettings`] (what a pool's connections use,
//! from code or configuration over the URL and libpq's environment variables), the checks of
//! the PEM files they name, and [`TlsError`], a connect that failed for a TLS reason, said in
//! TLS terms.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// Whether and how a connection uses TLS, with libpq's names and meanings (`sslmode`).
///
/// The text form (`FromStr`, `Display`, serde) is libpq's: `disable`, `prefer`, `require`,
/// `verify-ca`, `verify-full`. libpq's `allow` is refused: sqlx does not implement it (it would
/// connect without TLS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate; plaintext when it does
    /// not \[default, as in libpq\]. Protects against nobody: an attacker in the middle can
    /// answer that it offers no TLS.
    #[default]
    Prefer,
    /// TLS or no connection, without checking the server's certificate: encrypted, but not
    /// authenticated.
    Require,
    /// TLS, and the server's certificate must chain to a trusted CA (`sslrootcert`, plus the
    /// public roots built in); its host name is not checked.
    VerifyCa,
    /// TLS, the certificate must chain to a trusted CA and name the host connected to (by a DNS
    /// name or an IP address in its subject alternative names). What a managed database asks
    /// for.
    VerifyFull,
}

impl SslMode {
    /// libpq's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate is checked against the trusted CAs.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    pub(crate) fn of(mode: PgSslMode) -> Option<SslMode> {
        match mode {
            PgSslMode::Disable => Some(SslMode::Disable),
            PgSslMode::Prefer => Some(SslMode::Prefer),
            PgSslMode::Require => Some(SslMode::Require),
            PgSslMode::VerifyCa => Some(SslMode::VerifyCa),
            PgSslMode::VerifyFull => Some(SslMode::VerifyFull),
            PgSslMode::Allow => None,
        }
    }
}

impl From<SslMode> for PgSslMode {
    fn from(mode: SslMode) -> PgSslMode {
        match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not one of libpq's `sslmode`s that sqlx implements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid sslmode {0:?}: expected disable, prefer, require, verify-ca or verify-full{hint}",
    hint = allow_hint(&self.0)
)]
pub struct SslModeError(pub String);

/// What a refusal of `text` adds when it is libpq's `allow`.
fn allow_hint(text: &str) -> &'static str {
    if text.trim().eq_ignore_ascii_case("allow") { " (sqlx does not implement allow)" } else { "" }
}

impl FromStr for SslMode {
    type Err = SslModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(SslModeError(s.to_owned())),
        }
    }
}

/// TLS settings set in code or configuration, each over what the URL says (its `sslmode`,
/// `sslrootcert`, `sslcert` and `sslkey` parameters), which is itself over libpq's environment
/// variables (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`); a field left `None` keeps
/// what those say.
///
/// # Examples
///
/// ```
/// use pool_postgres::{PgManager, SslMode, TlsSettings};
///
/// # fn f() -> Result<(), pool_postgres::UrlError> {
/// let tls = TlsSettings::new()
///     .mode(SslMode::VerifyFull)
///     .root_cert("/etc/ssl/rds-global-bundle.pem");
/// let manager = PgManager::from_url("postgres://app@db.example.com/app")?.tls(tls);
/// assert_eq!(manager.ssl_mode(), SslMode::VerifyFull);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: Option<SslMode>,
    /// `sslrootcert`: a PEM file of the CA certificates to trust, besides the public roots
    /// built in (Mozilla's, through webpki-roots).
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: a PEM file of the client's certificate (and its chain), for servers that
    /// authenticate clients by certificate; with [`client_key`](Self::client_key).
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: a PEM file of the client certificate's private key.
    pub client_key: Option<PathBuf>,
}

impl TlsSettings {
    /// No setting: what the URL and the environment say.
    pub fn new() -> Self {
        TlsSettings::default()
    }

    /// Sets `sslmode`.
    #[must_use]
    pub fn mode(mut self, mode: SslMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Sets `sslrootcert`.
    #[must_use]
    pub fn root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_cert = Some(path.into());
        self
    }

    /// Sets `sslcert` and `sslkey`, the client certificate and its key.
    #[must_use]
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }
}

/// Which of the three files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    RootCert,
    ClientCert,
    ClientKey,
}

impl Which {
    const ALL: [Which; 3] = [Which::RootCert, Which::ClientCert, Which::ClientKey];

    /// libpq's name, as in a URL.
    pub(crate) fn param(self) -> &'static str {
        match self {
            Which::RootCert => "sslrootcert",
            Which::ClientCert => "sslcert",
            Which::ClientKey => "sslkey",
        }
    }

    /// The configuration's key.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Which::RootCert => "ssl_root_cert",
            Which::ClientCert => "ssl_cert",
            Which::ClientKey => "ssl_key",
        }
    }

    fn env(self) -> &'static str {
        match self {
            Which::RootCert => "PGSSLROOTCERT",
            Which::ClientCert => "PGSSLCERT",
            Which::ClientKey => "PGSSLKEY",
        }
    }

    /// The URL's parameter names sqlx reads for it.
    fn url_params(self) -> &'static [&'static str] {
        match self {
            Which::RootCert => &["sslrootcert", "ssl-root-cert", "ssl-ca"],
            Which::ClientCert => &["sslcert", "ssl-cert"],
            Which::ClientKey => &["sslkey", "ssl-key"],
        }
    }
}

/// Where a file's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Code or configuration ([`TlsSettings`]).
    Setting,
    /// The URL's parameter.
    Url,
    /// libpq's environment variable.
    Env,
}

/// One of the files, as sqlx will read it: a path, or PEM text given inline (sqlx takes a
/// value starting with `-----BEGIN` as the PEM itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct File {
    pub(crate) value: String,
    pub(crate) origin: Origin,
}

impl File {
    /// Whether sqlx takes it as the PEM itself: only libpq's variables may hold PEM (sqlx
    /// reads a URL's parameter and a setting as a path).
    fn inline(&self) -> bool {
        let t = self.value.trim();
        self.origin == Origin::Env && t.starts_with("-----BEGIN") && t.ends_with("-----")
    }

    /// How errors name it: its path and where the path came from.
    fn shown(&self, which: Which) -> String {
        let what = if self.inline() { "(PEM given inline)".to_owned() } else { self.value.clone() };
        match self.origin {
            Origin::Setting => format!("{} {what}", which.param()),
            Origin::Url => format!("{} {what} (from the URL)", which.param()),
            Origin::Env => format!("{} {what} (from {})", which.param(), which.env()),
        }
    }
}

/// The TLS a manager's connections use, as far as it is known: the mode always, and the files
/// the URL, the environment or the settings named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tls {
    /// The mode asked for.
    pub(crate) mode: SslMode,
    pub(crate) files: [Option<File>; 3],
    /// The connections go through a Unix socket.
    pub(crate) socket: bool,
}

impl Tls {
    /// What `url` (already parsed into `options` by sqlx, which applied libpq's variables
    /// beneath it) asks for.
    pub(crate) fn of_url(url: &str, options: &PgConnectOptions) -> Tls {
        let parsed = sqlx_core::Url::parse(url).ok();
        let from_url = |which: Which| {
            let pairs = parsed.as_ref()?.query_pairs();
            let value =
                pairs.filter(|(k, _)| which.url_params().contains(&&**k)).map(|(_, v)| v).last()?;
            Some(File { value: value.into_owned(), origin: Origin::Url })
        };
        let from_env = |which: Which| {
            let value = std::env::var(which.env()).ok()?;
            Some(File { value, origin: Origin::Env })
        };
        Tls {
            files: Which::ALL.map(|w| from_url(w).or_else(|| from_env(w))),
            ..Tls::of_options(options)
        }
    }

    /// What options built in code ask for: their mode (their files cannot be read back).
    pub(crate) fn of_options(options: &PgConnectOptions) -> Tls {
        Tls {
            mode: SslMode::of(options.get_ssl_mode()).unwrap_or_default(),
            files: [None, None, None],
            socket: options.get_socket().is_some() || options.get_host().starts_with('/'),
        }
    }

    /// The mode connects use, as libpq settles it: none over a Unix socket, where the server
    /// offers no TLS; and `require` with a root certificate given checks the certificate as
    /// `verify-ca` does.
    pub(crate) fn effective(&self) -> SslMode {
        match self.mode {
            _ if self.socket => SslMode::Disable,
            SslMode::Require if self.file(Which::RootCert).is_some() => SslMode::VerifyCa,
            mode => mode,
        }
    }

    pub(crate) fn file(&self, which: Which) -> Option<&File> {
        self.files[which as usize].as_ref()
    }

    /// `settings` applied over this, and to `options`.
    pub(crate) fn apply(
        &mut self,
        settings: &TlsSettings,
        mut options: PgConnectOptions,
    ) -> PgConnectOptions {
        if let Some(mode) = settings.mode {
            self.mode = mode;
            options = options.ssl_mode(mode.into());
        }
        let set = [&settings.root_cert, &settings.client_cert, &settings.client_key];
        for (which, path) in Which::ALL.into_iter().zip(set) {
            let Some(path) = path else { continue };
            self.files[which as usize] =
                Some(File { value: path.display().to_string(), origin: Origin::Setting });
            options = match which {
                Which::RootCert => options.ssl_root_cert(path),
                Which::ClientCert => options.ssl_client_cert(path),
                Which::ClientKey => options.ssl_client_key(path),
            };
        }
        options
    }

    /// The first problem with the files, when connects may use TLS: one that cannot be read or
    /// holds no PEM of its kind, or a client certificate without its key (or the reverse).
    pub(crate) fn file_problem(&self) -> Option<FileProblem> {
        match (self.file(Which::ClientCert), self.file(Which::ClientKey)) {
            (Some(f), None) => {
                let reason = "a client certificate needs its key (sslkey) too".to_owned();
                return Some(FileProblem { which: Which::ClientCert, file: f.clone(), reason });
            }
            (None, Some(f)) => {
                let reason = "a client key needs its certificate (sslcert) too".to_owned();
                return Some(FileProblem { which: Which::ClientKey, file: f.clone(), reason });
            }
            _ => {}
        }
        let mode = self.effective();
        if mode == SslMode::Disable {
            return None;
        }
        // `prefer` reads no root certificate (it checks nothing), but one named and missing is
        // a mistake all the same.
        Which::ALL.into_iter().find_map(|which| {
            let file = self.file(which)?;
            pem_problem(which, file).map(|reason| FileProblem { which, file: file.clone(), reason })
        })
    }
}

/// A file that a connect could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileProblem {
    pub(crate) which: Which,
    pub(crate) file: File,
    pub(crate) reason: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.shown(self.which), self.reason)
    }
}

/// Why `file` is not a PEM file of `which`'s kind, or `None`.
fn pem_problem(which: Which, file: &File) -> Option<String> {
    let data = if file.inline() {
        file.value.clone().into_bytes()
    } else {
        match std::fs::read(Path::new(&file.value)) {
            Ok(data) => data,
            Err(e) => return Some(format!("cannot read it: {e}")),
        }
    };
    match which {
        Which::RootCert | Which::ClientCert => {
            let mut certs = 0;
            for cert in CertificateDer::pem_slice_iter(&data) {
                if let Err(e) = cert {
                    return Some(format!("not a PEM certificate file: {e}"));
                }
                certs += 1;
            }
            (certs == 0).then(|| "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into())
        }
        Which::ClientKey => match PrivateKeyDer::from_pem_slice(&data) {
            Ok(_) => None,
            Err(pem::Error::NoItemsFound) => {
                Some("holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into())
            }
            Err(e) => Some(format!("not a PEM private key file: {e}")),
        },
    }
}

/// A connect that failed for a TLS reason: how it was asked to connect, and why it could not,
/// in TLS terms. Its `source` is sqlx's error.
///
/// It shows file paths and host names, never a password or a key.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {server} with sslmode={mode}: {failure}")]
#[non_exhaustive]
pub struct TlsError {
    /// The server: `host:port`, or the socket's path.
    pub server: String,
    /// The mode asked for.
    pub mode: SslMode,
    /// What went wrong.
    pub failure: TlsFailure,
    /// sqlx's error, when sqlx reported one.
    #[source]
    pub source: Option<sqlx::Error>,
}

/// Why a connect could not set up TLS as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server answered that it does not do TLS (`ssl = off`), and the mode requires it.
    #[error("the server does not support TLS (ssl = off on the server), and sslmode requires it")]
    NotSupported,
    /// The server's certificate does not chain to a trusted CA.
    #[error("the server's certificate is signed by an unknown CA: it does not chain to {trusted}")]
    UnknownCa {
        /// What was trusted: the `sslrootcert` file, and the public roots.
        trusted: String,
    },
    /// The server's certificate does not name the host connected to (`verify-full`).
    #[error(
        "the server's certificate does not match the host name {host:?}{}; connect by a name it lists, or use sslmode=verify-ca",
        if presented.is_empty() { String::new() } else { format!(" (it names {})", presented.join(", ")) }
    )]
    HostnameMismatch {
        /// The host name checked.
        host: String,
        /// The names the certificate gives, when known.
        presented: Vec<String>,
    },
    /// The server's certificate has expired.
    #[error("the server's certificate has expired{0}")]
    Expired(String),
    /// The server's certificate is not valid yet.
    #[error("the server's certificate is not valid yet{0}")]
    NotYetValid(String),
    /// The server's certificate was refused for another reason (a bad signature, a wrong
    /// purpose, revoked).
    #[error("the server's certificate was refused: {0}")]
    BadCertificate(String),
    /// The server ended the handshake with an alert: most often it refused the client
    /// certificate, or asked for one and got none.
    #[error("the server refused the TLS handshake ({alert}){}", hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    Refused {
        /// The alert, as TLS names it (`UnknownCA`, `CertificateRequired`...).
        alert: String,
        /// What it most likely means here.
        hint: Option<String>,
    },
    /// A certificate or key file could not be used.
    #[error("{0}")]
    File(String),
    /// Another TLS failure, in sqlx's or rustls's words.
    #[error("the TLS handshake failed: {0}")]
    Other(String),
}

/// `error`, from a connect made as `tls` asks to `options`' server, said in TLS terms; or
/// `error` itself when it is not a TLS failure.
pub(crate) fn explain(
    error: sqlx::Error,
    tls: &Tls,
    options: &PgConnectOptions,
) -> Result<TlsError, sqlx::Error> {
    let mode = tls.effective();
    if mode == SslMode::Disable {
        return Err(error);
    }
    let failure = match &error {
        sqlx::Error::Tls(e) if e.to_string() == "server does not support TLS" => {
            TlsFailure::NotSupported
        }
        sqlx::Error::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(cert)) => certificate(cert, tls, options),
            Some(rustls::Error::AlertReceived(alert)) => refused(*alert, tls),
            Some(other) => TlsFailure::Other(other.to_string()),
            // sqlx reads the files only when it starts the handshake; it says "No such file or
            // directory" without the file's name.
            None if matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
            {
                match tls.file_problem() {
                    Some(problem) => TlsFailure::File(problem.to_string()),
                    None => return Err(error),
                }
            }
            None => return Err(error),
        },
        sqlx::Error::Tls(e) => match tls.file_problem() {
            Some(problem) => TlsFailure::File(problem.to_string()),
            None => TlsFailure::Other(e.to_string()),
        },
        sqlx::Error::Configuration(_) => match tls.file_problem() {
            Some(problem) => TlsFailure::File(problem.to_string()),
            None => return Err(error),
        },
        _ => return Err(error),
    };
    Ok(TlsError { server: server(options), mode, failure, source: Some(error) })
}

fn certificate(error: &CertificateError, tls: &Tls, options: &PgConnectOptions) -> TlsFailure {
    let when =
        |time: &rustls::pki_types::UnixTime, word: &str, at: &rustls::pki_types::UnixTime| {
            format!(" ({word} {}, now {})", utc(at.as_secs()), utc(time.as_secs()))
        };
    match error {
        CertificateError::UnknownIssuer => TlsFailure::UnknownCa {
            trusted: match tls.file(Which::RootCert) {
                Some(f) => format!("{} or the public roots built in", f.shown(Which::RootCert)),
                None => "the public roots built in (no sslrootcert given)".to_owned(),
            },
        },
        CertificateError::NotValidForName => {
            TlsFailure::HostnameMismatch { host: options.get_host().to_owned(), presented: vec![] }
        }
        CertificateError::NotValidForNameContext { presented, .. } => {
            TlsFailure::HostnameMismatch {
                host: options.get_host().to_owned(),
                presented: presented.iter().map(|name| plain_name(name)).collect(),
            }
        }
        CertificateError::Expired => TlsFailure::Expired(String::new()),
        CertificateError::ExpiredContext { time, not_after } => {
            TlsFailure::Expired(when(time, "valid until", not_after))
        }
        CertificateError::NotValidYet => TlsFailure::NotYetValid(String::new()),
        CertificateError::NotValidYetContext { time, not_before } => {
            TlsFailure::NotYetValid(when(time, "valid from", not_before))
        }
        other => TlsFailure::BadCertificate(format!("{other:?}")),
    }
}

/// `secs` since the Unix epoch as a UTC time, `2001-01-01 00:00:00 UTC`.
fn utc(secs: u64) -> String {
    // Howard Hinnant's civil-from-days, on days since 1970-01-01.
    let (days, rest) = (i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2), secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3_600, rest % 3_600 / 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02} UTC")
}

/// A name a certificate presents, as webpki prints it (`DnsName("db.example.com")`,
/// `IpAddress(10.0.0.5)`), without the wrapper.
fn plain_name(name: &str) -> String {
    let inner = name
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| name.strip_prefix("IpAddress(").and_then(|n| n.strip_suffix(')')));
    inner.unwrap_or(name).to_owned()
}

fn refused(alert: AlertDescription, tls: &Tls) -> TlsFailure {
    let cert = tls.file(Which::ClientCert);
    let hint = match (alert, cert) {
        (AlertDescription::CertificateRequired, None) => {
            Some("it requires a client certificate (sslcert and sslkey)".to_owned())
        }
        (
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied,
            Some(cert),
        ) => Some(format!(
            "it did not accept the client certificate {}",
            cert.shown(Which::ClientCert)
        )),
        _ => None,
    };
    TlsFailure::Refused { alert: format!("{alert:?}"), hint }
}

/// The server `options` connect to, as errors name it.
pub(crate) fn server(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(dir) => format!("{}/.s.PGSQL.{}", dir.display(), options.get_port()),
        None if options.get_host().starts_with('/') => {
            format!("{}/.s.PGSQL.{}", options.get_host(), options.get_port())
        }
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_and_print_as_libpq_writes_them() {
        for mode in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(mode.as_str().parse::<SslMode>(), Ok(mode));
            assert_eq!(SslMode::of(mode.into()), Some(mode));
        }
        assert_eq!(" Verify-Full ".parse::<SslMode>(), Ok(SslMode::VerifyFull));
        let e = "allow".parse::<SslMode>().unwrap_err().to_string();
        assert!(e.contains("sqlx does not implement allow"), "{e}");
        assert!("verify_full".parse::<SslMode>().is_err());
    }

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(978_307_199), "2000-12-31 23:59:59 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(4_102_444_800), "2100-01-01 00:00:00 UTC");
    }

    #[test]
    fn presented_names_read_plainly() {
        assert_eq!(plain_name("DnsName(\"db.example.com\")"), "db.example.com");
        assert_eq!(plain_name("IpAddress(10.0.0.5)"), "10.0.0.5");
        assert_eq!(plain_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn file_problems_name_the_file_and_why() {
        let dir = std::env::temp_dir().join(format!("pool-postgres-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let file = |path: &Path, origin| Some(File { value: path.display().to_string(), origin });
        let tls = |files| Tls { mode: SslMode::VerifyFull, files, socket: false };
        let missing = dir.join("missing.pem");
        let p = tls([file(&missing, Origin::Setting), None, None]).file_problem().unwrap();
        assert!(
            p.to_string()
                .starts_with(&format!("sslrootcert {}: cannot read it", missing.display())),
            "{p}"
        );
        let p = tls([file(&not_pem, Origin::Env), None, None]).file_problem().unwrap();
        assert_eq!(
            p.to_string(),
            format!(
                "sslrootcert {} (from PGSSLROOTCERT): holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                not_pem.display()
            )
        );
        let p = tls([None, None, file(&not_pem, Origin::Url)]).file_problem().unwrap();
        assert!(p.to_string().contains("needs its certificate"), "{p}");
        let p = tls([None, file(&not_pem, Origin::Url), file(&not_pem, Origin::Url)])
            .file_problem()
            .unwrap();
        assert_eq!(p.which, Which::ClientCert);
        assert!(p.to_string().contains("(from the URL): holds no PEM certificate"), "{p}");
        // `require` with a root certificate checks it, as in libpq.
        let mut t = Tls {
            mode: SslMode::Require,
            files: [file(&missing, Origin::Setting), None, None],
            socket: false,
        };
        assert_eq!(t.effective(), SslMode::VerifyCa);
        assert!(t.file_problem().is_some());
        t.mode = SslMode::Disable;
        assert_eq!(t.file_problem(), None, "no TLS, no file read");
        // Over a Unix socket no TLS is used, so no file is read.
        t.socket = true;
        assert_eq!((t.effective(), t.file_problem()), (SslMode::Disable, None));
    }
}
