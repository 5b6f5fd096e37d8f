//! Credentials that change: [`CredentialProvider`], asked for a password or token whenever a
//! backend opens a connection, the [`Credential`] it returns, and the providers that ship:
//! [`StaticCredentials`] (one fixed value), [`CachedCredentials`] (keeps a fetched token until
//! shortly before it expires, one fetch at a time), [`FileCredentials`] (a file re-read when it
//! changes, as Vault agent and Kubernetes rotate secrets) and [`FnCredentials`] (an async
//! function).
//!
//! Nothing here shows a secret: a [`Credential`]'s `Debug` prints `***`, and
//! [`CredentialError`]'s messages name the file or the provider, never the value.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use crate::settings::Secret;

/// A password or token for the connections a backend opens, and when the server stops taking
/// it.
///
/// Expiry is kept on tokio's clock ([`tokio::time::Instant`]), so a test that pauses and
/// advances tokio's clock moves it too; in a running service it is the monotonic clock.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use pool_core::Credential;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let token = Credential::expiring_in("token-from-the-cloud", Duration::from_secs(900));
/// assert!(!token.is_expired());
/// assert!(format!("{token:?}").starts_with("Credential { secret: ***, expires_in: Some("));
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    secret: Secret,
    expires_at: Option<Instant>,
}

impl Credential {
    /// A credential that does not expire (a password).
    pub fn new(secret: impl Into<Secret>) -> Self {
        Credential { secret: secret.into(), expires_at: None }
    }

    /// A credential the server takes until `at`, on tokio's clock.
    pub fn expiring_at(secret: impl Into<Secret>, at: Instant) -> Self {
        Credential { secret: secret.into(), expires_at: Some(at) }
    }

    /// A credential valid for `valid_for` from now (a token issued now, valid 15 minutes).
    pub fn expiring_in(secret: impl Into<Secret>, valid_for: Duration) -> Self {
        let now = Instant::now();
        let at = now.checked_add(valid_for).unwrap_or_else(|| far_future(now));
        Credential::expiring_at(secret, at)
    }

    /// A credential valid until the wall-clock time `until` (the expiry a token service
    /// reports), taken as that much time from now on tokio's clock; a time already past gives
    /// a credential that has expired.
    pub fn valid_until(secret: impl Into<Secret>, until: SystemTime) -> Self {
        let left = until.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        Credential::expiring_in(secret, left)
    }

    /// The secret, which shows `***` in `Debug`; [`Secret::expose`] gives the value to the code
    /// that connects.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The value itself, for the code that connects.
    pub fn expose(&self) -> &str {
        self.secret.expose()
    }

    /// When the server stops taking it, on tokio's clock; `None` for never.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// Whether its expiry has passed.
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|at| Instant::now() >= at)
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret's own `Debug`: a token that happened to look like a URL would show
        // its query, and a token's signature lives there.
        let expires_in = self.expires_at.map(|at| at.saturating_duration_since(Instant::now()));
        f.debug_struct("Credential")
            .field("secret", &format_args!("***"))
            .field("expires_in", &expires_in)
            .finish()
    }
}

/// Why a provider had no credential to give.
///
/// Its messages name the file or say what the provider reported; they never hold a credential.
/// It is `Clone` so that every connect waiting on one fetch gets that fetch's failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The password file could not be read.
    #[error("cannot read the password file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The password file holds nothing (or only line breaks).
    #[error("the password file {} is empty", path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// The provider returned a credential whose expiry had passed already.
    #[error("the credential provider returned a credential that had already expired")]
    Expired,
    /// The provider failed: a token service that did not answer, a refused request. Its error
    /// is kept as the source; it must not hold the credential itself.
    #[error("the credential provider failed: {0}")]
    Provider(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl CredentialError {
    /// A provider's own failure, kept as the source.
    pub fn provider(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        CredentialError::Provider(Arc::from(error.into()))
    }
}

/// An async source of the password or token a backend sends when it opens a connection: asked
/// once per new connection, and again only where a backend must log an open connection in anew
/// (a reset on return that logs the connection out, as Redis's `RESET` does, asks on every
/// return).
/// Rotating a credential closes no connection: connections opened with the old one keep
/// working until they are recycled.
///
/// Object-safe, so a backend holds `Arc<dyn CredentialProvider>`; `Arc<P>` is a provider too, so
/// code can keep a handle on the provider it hands over.
///
/// # Examples
///
/// A provider of tokens that expire, fetched from a token service and kept until a minute
/// before their expiry ([`CachedCredentials`]):
///
/// ```
/// use std::time::Duration;
/// use pool_core::{CachedCredentials, Credential, CredentialProvider, FnCredentials};
///
/// async fn fetch_token() -> Result<String, std::io::Error> {
///     Ok("token".to_owned()) // a call to the cloud's token service
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), pool_core::CredentialError> {
/// let provider = CachedCredentials::new(FnCredentials::new(|| async {
///     let token = fetch_token().await.map_err(pool_core::CredentialError::provider)?;
///     Ok(Credential::expiring_in(token, Duration::from_secs(900)))
/// }));
/// assert_eq!(provider.credential().await?.expose(), "token");
/// # Ok(()) }
/// ```
#[async_trait]
pub trait CredentialProvider: Send + Sync + fmt::Debug + 'static {
    /// The credential for a connection about to be opened.
    ///
    /// # Errors
    ///
    /// [`CredentialError`] when there is none to give; the connect fails with it.
    async fn credential(&self) -> Result<Credential, CredentialError>;

    /// Tells the provider that the server refused `credential` (an authentication failure), so
    /// a provider that keeps credentials drops it and the next [`credential`](Self::credential)
    /// fetches afresh. The default does nothing.
    fn refused(&self, credential: &Credential) {
        let _ = credential;
    }
}

#[async_trait]
impl<P: CredentialProvider + ?Sized> CredentialProvider for Arc<P> {
    async fn credential(&self) -> Result<Credential, CredentialError> {
        (**self).credential().await
    }

    fn refused(&self, credential: &Credential) {
        (**self).refused(credential);
    }
}

/// One credential, always the same: a password set in code or in configuration.
#[derive(Debug, Clone)]
pub struct StaticCredentials(Credential);

impl StaticCredentials {
    /// Always `credential`.
    pub fn new(credential: Credential) -> Self {
        StaticCredentials(credential)
    }

    /// Always the password `secret`, which does not expire.
    pub fn password(secret: impl Into<Secret>) -> Self {
        StaticCredentials(Credential::new(secret))
    }
}

#[async_trait]
impl CredentialProvider for StaticCredentials {
    async fn credential(&self) -> Result<Credential, CredentialError> {
        Ok(self.0.clone())
    }
}

/// A provider from an async function or closure, called on every connect: wrap it in
/// [`CachedCredentials`] to call it only when its last credential is about to expire.
pub struct FnCredentials<F>(F);

impl<F, Fut> FnCredentials<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Credential, CredentialError>> + Send + 'static,
{
    /// A provider that calls `f` for each credential.
    pub fn new(f: F) -> Self {
        FnCredentials(f)
    }
}

impl<F> fmt::Debug for FnCredentials<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnCredentials")
    }
}

#[async_trait]
impl<F, Fut> CredentialProvider for FnCredentials<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Credential, CredentialError>> + Send + 'static,
{
    async fn credential(&self) -> Result<Credential, CredentialError> {
        (self.0)().await
    }
}

/// Keeps the credentials of another provider until shortly before they expire, and fetches one
/// at a time however many connects ask.
///
/// - **Fresh**: a credential is handed out as it is until its refresh point, `margin`
///   \[60 s\] before its expiry, or half its lifetime before it when that is shorter (a token
///   valid 60 s is refreshed after 30 s). A credential without an expiry is kept until the
///   server refuses it.
/// - **Due**: past its refresh point but not expired, it is still handed out at once, and a
///   new one is fetched in the background; if that fetch fails, it is used while it lasts (and
///   a warning logged).
/// - **Expired or none**: callers wait for one fetch and all get its result, credential or
///   error (single flight).
/// - **Refused**: [`refused`](CredentialProvider::refused) drops the credential if it is still
///   the one kept, so the next caller fetches afresh; it is passed on to the inner provider.
///
/// A fetch runs as a task of its own, so a caller that stops waiting (its connect timed out)
/// neither cancels it nor fails the others: a token service slower than `connect_timeout` still
/// delivers, and the next connect gets its token. Times are read on tokio's clock, so tests can
/// pause and advance it; it must be used inside a tokio runtime.
#[derive(Debug)]
pub struct CachedCredentials<P> {
    shared: Arc<Shared<P>>,
    margin: Duration,
}

#[derive(Debug)]
struct Shared<P> {
    inner: P,
    cache: Mutex<Cache>,
    /// The number of fetches finished, for those waiting on one.
    finished: tokio::sync::watch::Sender<u64>,
    fetches: AtomicU64,
}

#[derive(Debug, Default)]
struct Cache {
    current: Option<Kept>,
    /// A fetch is running.
    in_flight: bool,
    /// The last fetch's failure, while no fetch has succeeded since.
    failure: Option<CredentialError>,
}

#[derive(Debug)]
struct Kept {
    credential: Credential,
    /// When to fetch the next one; `None` for never (no expiry).
    refresh_at: Option<Instant>,
}

impl Kept {
    fn fresh(&self, now: Instant) -> bool {
        self.refresh_at.is_none_or(|at| now < at)
    }

    fn usable(&self, now: Instant) -> bool {
        self.credential.expires_at.is_none_or(|at| now < at)
    }
}

impl<P: CredentialProvider> CachedCredentials<P> {
    /// Keeps `inner`'s credentials until a minute before they expire.
    pub fn new(inner: P) -> Self {
        CachedCredentials {
            shared: Arc::new(Shared {
                inner,
                cache: Mutex::default(),
                finished: tokio::sync::watch::Sender::new(0),
                fetches: AtomicU64::new(0),
            }),
            margin: Duration::from_secs(60),
        }
    }

    /// Refreshes credentials `margin` before their expiry \[60 s\] (or half their lifetime
    /// before it, when that is shorter).
    #[must_use]
    pub fn refresh_before(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// How many times the inner provider was asked, successfully or not.
    pub fn fetches(&self) -> u64 {
        self.shared.fetches.load(Ordering::Relaxed)
    }

    /// The inner provider.
    pub fn inner(&self) -> &P {
        &self.shared.inner
    }

    /// Starts a fetch as a task of its own, unless one is running; under the cache's lock.
    fn start_fetch(&self, cache: &mut Cache) {
        if cache.in_flight {
            return;
        }
        cache.in_flight = true;
        self.shared.fetches.fetch_add(1, Ordering::Relaxed);
        let (shared, margin) = (Arc::clone(&self.shared), self.margin);
        tokio::spawn(async move {
            // Whatever happens to the fetch (a panic included), the waiters hear of its end.
            let mut done = Done { shared: &shared, result: None };
            let fetched_at = Instant::now();
            let result = match shared.inner.credential().await {
                Ok(c) if c.is_expired() => Err(CredentialError::Expired),
                other => other,
            };
            done.result = Some(result.map(|credential| {
                let refresh_at = credential.expires_at.map(|at| {
                    let life = at.saturating_duration_since(fetched_at);
                    at.checked_sub(margin.min(life / 2)).unwrap_or(fetched_at)
                });
                Kept { credential, refresh_at }
            }));
        });
    }
}

/// Records a fetch's end when dropped: its result, or a failure if it panicked.
struct Done<'a, P> {
    shared: &'a Shared<P>,
    result: Option<Result<Kept, CredentialError>>,
}

impl<P> Drop for Done<'_, P> {
    fn drop(&mut self) {
        let result = self
            .result
            .take()
            .unwrap_or_else(|| Err(CredentialError::provider("the credential provider panicked")));
        let mut cache = self.shared.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.in_flight = false;
        match result {
            Ok(kept) => {
                cache.current = Some(kept);
                cache.failure = None;
            }
            Err(e) => {
                if cache.current.is_some() {
                    tracing::warn!(error = %e, "refreshing a credential failed; the current one is used until it expires");
                }
                cache.failure = Some(e);
            }
        }
        drop(cache);
        self.shared.finished.send_modify(|n| *n += 1);
    }
}

#[async_trait]
impl<P: CredentialProvider> CredentialProvider for CachedCredentials<P> {
    async fn credential(&self) -> Result<Credential, CredentialError> {
        let mut finished = self.shared.finished.subscribe();
        let mut waited = false;
        loop {
            {
                let now = Instant::now();
                let mut cache = self.shared.cache.lock().unwrap_or_else(PoisonError::into_inner);
                match &cache.current {
                    Some(kept) if kept.fresh(now) => return Ok(kept.credential.clone()),
                    Some(kept) if kept.usable(now) => {
                        let credential = kept.credential.clone();
                        self.start_fetch(&mut cache);
                        return Ok(credential);
                    }
                    _ => {}
                }
                // Nothing usable: a fetch that ended while this caller waited answers it.
                if waited
                    && !cache.in_flight
                    && let Some(failure) = &cache.failure
                {
                    return Err(failure.clone());
                }
                self.start_fetch(&mut cache);
                finished.mark_unchanged();
            }
            waited = true;
            if finished.changed().await.is_err() {
                return Err(CredentialError::provider("the credential cache was dropped"));
            }
        }
    }

    fn refused(&self, credential: &Credential) {
        {
            let mut cache = self.shared.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache
                .current
                .as_ref()
                .is_some_and(|kept| kept.credential.secret == credential.secret)
            {
                cache.current = None;
            }
        }
        self.shared.inner.refused(credential);
    }
}

/// A password read from a file, read again whenever the file changes: how Vault agent,
/// Kubernetes secrets mounted as files and other rotators hand a service its password.
///
/// Each connect looks at the file's metadata (modification time, length, and on Unix the
/// inode, so a symbolic link swapped to a new file, as Kubernetes does, counts as a change) and
/// reads the file only when that changed, or after the server refused the password read last.
/// Line breaks at the end are dropped; anything else, spaces included, is the password. A
/// missing, unreadable or empty file is a [`CredentialError`] naming the file, never its
/// contents.
///
/// The file is read with blocking calls on the connecting task: one `stat`, and a read of a
/// few bytes when it changed, per new connection.
#[derive(Debug)]
pub struct FileCredentials {
    path: PathBuf,
    last: Mutex<Option<(Stamp, Credential)>>,
}

/// What identifies one version of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp { modified: meta.modified().ok(), len: meta.len(), inode }
    }
}

impl FileCredentials {
    /// The password in the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileCredentials { path: path.into(), last: Mutex::new(None) }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the password now, as a connect would: for a check at start-up that the file is
    /// there and not empty.
    ///
    /// # Errors
    ///
    /// [`CredentialError::File`] or [`CredentialError::EmptyFile`], naming the file.
    pub fn read(&self) -> Result<Credential, CredentialError> {
        let file_error = |e| CredentialError::File { path: self.path.clone(), source: Arc::new(e) };
        let stamp = Stamp::of(&std::fs::metadata(&self.path).map_err(file_error)?);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, credential)) = &*last
            && *seen == stamp
        {
            return Ok(credential.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(file_error)?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(CredentialError::EmptyFile { path: self.path.clone() });
        }
        let credential = Credential::new(password);
        *last = Some((stamp, credential.clone()));
        Ok(credential)
    }
}

#[async_trait]
impl CredentialProvider for FileCredentials {
    async fn credential(&self) -> Result<Credential, CredentialError> {
        self.read()
    }

    fn refused(&self, _credential: &Credential) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// A moment a century after `now`, as good as never, for expiries that would overflow.
fn far_future(now: Instant) -> Instant {
    now.checked_add(crate::config::MAX_DURATION).unwrap_or(now)
}

#[cfg(test)]
mod tests;
