//! TLS for `rediss://` URLs: the rustls client configuration built from a pool's settings (the
//! CA to trust, a client certificate), the checks of their PEM files, and what a failed handshake
//! means, said in TLS terms.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fred::error::{Error, ErrorKind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// The TLS settings of one pool, as given: where the certificates are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TlsFiles<'a> {
    /// `tls_ca_cert`: the CA certificates to trust, in place of the system's.
    pub(crate) ca: Option<&'a Path>,
    /// `tls_cert`: the client certificate (with its chain).
    pub(crate) cert: Option<&'a Path>,
    /// `tls_key`: the client certificate's private key.
    pub(crate) key: Option<&'a Path>,
}

/// A TLS setting that cannot be used: which key, the file, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileProblem {
    pub(crate) setting: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) reason: String,
}

impl TlsFiles<'_> {
    /// Reads and parses every file, as a connect would: the first that cannot be used.
    pub(crate) fn check(&self) -> Result<(), FileProblem> {
        if let Some(ca) = self.ca {
            ca_roots(ca)?;
        }
        self.client_auth()?;
        Ok(())
    }

    /// The client certificate and its key, when both are set; one without the other is a problem
    /// of the one set. A key that does not match its certificate is the key's problem.
    fn client_auth(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, FileProblem> {
        let (cert_path, key_path) = match (self.cert, self.key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(cert), None) => {
                return Err(problem(
                    "tls_cert",
                    cert,
                    "a client certificate needs its private key: set tls_key too",
                ));
            }
            (None, Some(key)) => {
                return Err(problem(
                    "tls_key",
                    key,
                    "a private key needs its client certificate: set tls_cert too",
                ));
            }
        };
        let certs = certificates("tls_cert", cert_path)?;
        let pem = read("tls_key", key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            let reason = match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "holds no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                        .to_owned()
                }
                // The parser's own words name a malformed section, never the key's bytes.
                other => format!("is not a readable PEM private key: {other}"),
            };
            problem("tls_key", key_path, &reason)
        })?;
        // rustls checks that the key signs with what the certificate's public key verifies.
        builder()
            .with_root_certificates(RootCertStore::empty())
            .with_client_auth_cert(certs.clone(), key.clone_key())
            .map_err(|e| {
                problem(
                    "tls_key",
                    key_path,
                    &format!("cannot be used with the certificate of tls_cert: {e}"),
                )
            })?;
        Ok(Some((certs, key)))
    }

    /// The client configuration every connection of the pool makes its handshake with: the CA
    /// file's certificates as the only roots when `tls_ca_cert` is set, else the system's;
    /// the client certificate when set; host names always verified.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, FileProblem> {
        let roots = match self.ca {
            Some(ca) => ca_roots(ca)?,
            None => system_roots()?,
        };
        let builder = builder().with_root_certificates(roots);
        match self.client_auth()? {
            Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
                let key = self.key.unwrap_or(Path::new(""));
                problem("tls_key", key, &format!("cannot be used with the certificate: {e}"))
            }),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// A builder on ring, whatever other provider the process has installed, with rustls's safe
/// default protocol versions (TLS 1.2 and 1.3).
fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    // rustls marks ring's provider deprecated for its lack of post-quantum key exchange (X25519
    // and the NIST curves it has are what Redis servers offer); ring is kept for its build,
    // which needs no cmake (see the manifest).
    #[allow(deprecated)]
    let ring = rustls::crypto::ring::default_provider();
    ClientConfig::builder_with_provider(Arc::new(ring))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions")
}

/// The certificates of the CA file, each parsed as X.509; a file with none usable is a problem.
fn ca_roots(ca: &Path) -> Result<RootCertStore, FileProblem> {
    let mut roots = RootCertStore::empty();
    let (_, refused) = roots.add_parsable_certificates(certificates("tls_ca_cert", ca)?);
    if roots.is_empty() {
        return Err(problem(
            "tls_ca_cert",
            ca,
            &format!("holds {refused} PEM certificate(s), none a readable X.509 certificate"),
        ));
    }
    Ok(roots)
}

/// The system's CA certificates (as OpenSSL finds them: `SSL_CERT_FILE`, `SSL_CERT_DIR`, the
/// distribution's bundle).
fn system_roots() -> Result<RootCertStore, FileProblem> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(FileProblem {
            setting: "tls_ca_cert",
            path: PathBuf::from("(unset)"),
            reason: format!(
                "is not set, and the system has no CA certificates to trust instead{why}: set it to \
                 the CA that signs the server's certificate, or install the system's CA bundle \
                 (ca-certificates)"
            ),
        });
    }
    Ok(roots)
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, FileProblem> {
    std::fs::read(path).map_err(|e| problem(setting, path, &format!("cannot read it: {e}")))
}

/// Every certificate of a PEM file; none is a problem.
fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    let pem = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(setting, path, &format!("is not a readable PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(problem(setting, path, "holds no PEM certificate (BEGIN CERTIFICATE)"));
    }
    Ok(certs)
}

fn problem(setting: &'static str, path: &Path, reason: &str) -> FileProblem {
    FileProblem { setting, path: path.to_owned(), reason: reason.to_owned() }
}

/// fred's error of a connect over TLS, with what it means in TLS terms in front when it is a
/// handshake's failure (fred passes on rustls's error in its debug form), naming the server;
/// other errors as they are. A certificate error holds no secret, only names and times.
///
/// A timeout is looked into: `probe` (`host`, `port`, a bound) says where to send a plaintext
/// `PING`, and an answer in plaintext means the server does not speak TLS on that port.
pub(crate) async fn explain(error: Error, server: &str, probe: (&str, u16, Duration)) -> Error {
    if *error.kind() == ErrorKind::Timeout {
        let (host, port, bound) = probe;
        return match tokio::time::timeout(bound, answers_plaintext(host, port)).await {
            Ok(true) => Error::new(
                ErrorKind::Tls,
                format!(
                    "TLS with {server} failed: the server does not speak TLS on this port: it \
                     never answered the handshake, and answered a plaintext PING (use redis://, \
                     or the server's tls-port)"
                ),
            ),
            _ => error,
        };
    }
    let details = error.details();
    let Some(why) = meaning(details) else { return error };
    Error::new(ErrorKind::Tls, format!("TLS with {server} failed: {why} ({details})"))
}

/// Whether the server at `host:port` answers a plaintext `PING` as Redis does (`+PONG`, or an
/// error such as `-NOAUTH`); a TLS server answers with an alert record, or closes.
async fn answers_plaintext(host: &str, port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut socket) = tokio::net::TcpStream::connect((host, port)).await else {
        return false;
    };
    if socket.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(socket.read(&mut first).await, Ok(1) if first[0] == b'+' || first[0] == b'-')
}

/// What a rustls error, in its debug form, means to someone configuring the pool.
fn meaning(details: &str) -> Option<String> {
    let has = |word: &str| details.contains(word);
    Some(
        if has("UnknownIssuer") {
            "the server's certificate is signed by an unknown CA, not one this pool trusts: set \
             tls_ca_cert to the CA that signs it"
        } else if has("NotValidForName") {
            "hostname mismatch: the server's certificate is not valid for the host name in the URL"
        } else if has("NotValidYet") {
            "the server's certificate is not valid yet (check the clocks)"
        } else if has("Expired") {
            "the server's certificate has expired"
        } else if has("CertificateRequired") || (has("HandshakeFailure") && has("AlertReceived")) {
            "the server requires a client certificate (tls-auth-clients): set tls_cert and tls_key"
        } else if has("AlertReceived(BadCertificate)")
            || has("AlertReceived(UnknownCA)")
            || has("AlertReceived(CertificateUnknown)")
        {
            "the server refused the client certificate (tls_cert): it does not trust its CA"
        } else if has("InvalidContentType")
            || has("CorruptMessage")
            || has("InvalidMessage")
            || has("peer is incompatible")
        {
            "the server does not speak TLS on this port (a plaintext port? use redis://)"
        } else if has("InvalidCertificate") || has("AlertReceived") {
            "the handshake was refused"
        } else {
            return None;
        }
        .to_owned(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed CA certificate (P-256), for the checks that parse one.
    pub(crate) const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBnDCCAUGgAwIBAgIUfm3t+YQtMycaT0ubPWfRVnskytAwCgYIKoZIzj0EAwIw\nIjEgMB4GA1UEAwwXcG9vbC1yZWRpcyB1bml0IHRlc3QgQ0EwIBcNMjYxMjA3MjMy\nNzE4WhgPMjEyNjExMTMyMzI3MThaMCIxIDAeBgNVBAMMF3Bvb2wtcmVkaXMgdW5p\ndCB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEbgs0ZzfVi6BFiV3d\nzLZ6kMAlFYIbCs6iuKQGZFBaDsdZ4NSQX51M01cCsEO6BcFZqMW4MI3fYkZqeKFh\nmRmO+KNTMFEwHQYDVR0OBBYEFHMwjyQR92571PMqAfshs+KW6qBpMB8GA1UdIwQY\nMBaAFHMwjyQR92571PMqAfshs+KW6qBpMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI\nzj0EAwIDSQAwRgIhANLIrV8DgtiYufoudny6yLHVvfaDsqTjmeEGJzIr24SpAiEA\n+CG8i+T7qxZNVIPatAli9BeiUeAd6Zorl8r5Hw+duVM=\n-----END CERTIFICATE-----\n";

    #[tokio::test]
    async fn rustls_errors_are_said_in_tls_terms() {
        for (details, says) in [
            (
                "Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }",
                "unknown CA",
            ),
            (
                "Custom { kind: InvalidData, error: InvalidCertificate(NotValidForNameContext { \
                 expected: DnsName(\"x\"), presented: [] }) }",
                "hostname mismatch",
            ),
            (
                "Custom { kind: InvalidData, error: InvalidCertificate(ExpiredContext { time: \
                 UnixTime(1), not_after: UnixTime(0) }) }",
                "has expired",
            ),
            (
                "Custom { kind: InvalidData, error: InvalidMessage(InvalidContentType) }",
                "does not speak TLS",
            ),
            (
                "Custom { kind: InvalidData, error: AlertReceived(CertificateRequired) }",
                "requires a client certificate",
            ),
        ] {
            let e = explain(Error::new(ErrorKind::IO, details), "127.0.0.1:6380", NOWHERE).await;
            assert_eq!(*e.kind(), ErrorKind::Tls, "{details}");
            assert!(e.details().contains(says), "{details}: {e}");
            assert!(e.details().starts_with("TLS with 127.0.0.1:6380 failed: "), "{e}");
        }
        let refused = Error::new(ErrorKind::IO, "Os { code: 111, kind: ConnectionRefused }");
        assert_eq!(explain(refused.clone(), "h:1", NOWHERE).await, refused);
        // A timeout stays one when the plaintext probe finds nobody either.
        let timeout = Error::new(ErrorKind::Timeout, "Request timed out.");
        assert_eq!(explain(timeout.clone(), "h:1", NOWHERE).await, timeout);
    }

    /// A port nothing listens on (the discard port, refused on loopback), with a short bound.
    const NOWHERE: (&str, u16, Duration) = ("127.0.0.1", 9, Duration::from_millis(200));

    #[test]
    fn files_are_checked_naming_the_setting_and_the_path() {
        let dir = std::env::temp_dir().join(format!("pool-redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let missing = dir.join("missing.pem");
        let garbage = dir.join("garbage.pem");
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(&garbage, pem).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, TEST_CA).unwrap();
        assert!(TlsFiles { ca: Some(&ca), cert: None, key: None }.check().is_ok());
        let p = TlsFiles { ca: Some(&garbage), cert: None, key: None }.check().unwrap_err();
        assert!(p.reason.contains("none a readable X.509 certificate"), "{p:?}");
        for (files, setting, says) in [
            (TlsFiles { ca: Some(&missing), cert: None, key: None }, "tls_ca_cert", "cannot read"),
            (TlsFiles { ca: Some(&not_pem), cert: None, key: None }, "tls_ca_cert", "no PEM"),
            (TlsFiles { ca: None, cert: Some(&not_pem), key: None }, "tls_cert", "set tls_key"),
            (TlsFiles { ca: None, cert: None, key: Some(&not_pem) }, "tls_key", "set tls_cert"),
            (
                TlsFiles { ca: None, cert: Some(&not_pem), key: Some(&not_pem) },
                "tls_cert",
                "no PEM certificate",
            ),
        ] {
            let p = files.check().unwrap_err();
            assert_eq!(p.setting, setting, "{p:?}");
            assert!(p.reason.contains(says), "{p:?}");
            assert!(p.path == not_pem || p.path == missing, "{p:?}");
        }
        assert!(TlsFiles { ca: None, cert: None, key: None }.check().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
