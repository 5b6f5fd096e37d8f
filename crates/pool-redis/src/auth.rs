//! The credentials of a pool's connections: the URL's password, or a [`CredentialProvider`]
//! handed to fred so that every connect and reconnect asks it, and the `AUTH` the reset on
//! return sends (`RESET` logs the connection out).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use fred::error::{Error, ErrorKind};
use fred::types::Value;
use fred::types::config::{Config, Server};
use pool_core::{Credential, CredentialProvider, Secret};

/// Where one pool's connections get their password or token, and the user they log in as.
#[derive(Clone)]
pub(crate) struct Credentials {
    /// The URL's user name (`redis://user:password@host`), sent with every password.
    username: Option<String>,
    source: Source,
}

#[derive(Clone)]
enum Source {
    /// No password: the connection is the server's `default` user without `AUTH`.
    None,
    /// The URL's password.
    Password(Secret),
    /// A provider, asked on every connect, reconnect and reset.
    Provider(Arc<dyn CredentialProvider>),
}

/// The `AUTH` the reset on return sends, and the credential it came from (to report it refused).
pub(crate) struct ResetAuth {
    pub(crate) args: Vec<Value>,
    pub(crate) credential: Option<Credential>,
}

impl Credentials {
    /// The URL's user and password from fred's `config`, or `provider` in place of the password.
    pub(crate) fn new(config: &Config, provider: Option<Arc<dyn CredentialProvider>>) -> Self {
        let source = match (provider, &config.password) {
            (Some(provider), _) => Source::Provider(provider),
            (None, Some(password)) => Source::Password(Secret::from(password.as_str())),
            (None, None) => Source::None,
        };
        Credentials { username: config.username.clone(), source }
    }

    /// Sets up `config` for one new client: with a provider, fred asks an adapter of it (this
    /// client's own, returned, which remembers what it handed out) instead of sending the URL's
    /// password.
    pub(crate) fn install(&self, config: &mut Config) -> Option<Arc<FredCredentials>> {
        let Source::Provider(provider) = &self.source else { return None };
        let adapter = Arc::new(FredCredentials {
            provider: Arc::clone(provider),
            username: self.username.clone(),
            last: Mutex::new(None),
        });
        config.password = None;
        config.credential_provider =
            Some(Arc::clone(&adapter) as Arc<dyn fred::types::config::CredentialProvider>);
        Some(adapter)
    }

    /// The `AUTH` for the reset on return: the URL's password, or the provider's current
    /// credential (a rotated password, a token fresher than the one the connection opened with);
    /// `None` without a password.
    ///
    /// # Errors
    ///
    /// The provider's failure, as an error of kind `Auth`.
    pub(crate) async fn for_reset(&self) -> Result<Option<ResetAuth>, Error> {
        let (secret, credential) = match &self.source {
            Source::None => return Ok(None),
            Source::Password(password) => (password.expose().to_owned(), None),
            Source::Provider(provider) => {
                let credential = provider.credential().await.map_err(provider_failed)?;
                (credential.expose().to_owned(), Some(credential))
            }
        };
        let mut args: Vec<Value> = self.username.iter().map(|u| Value::from(u.as_str())).collect();
        args.push(secret.into());
        Ok(Some(ResetAuth { args, credential }))
    }

    /// Tells the provider, if any, that the server refused `credential`.
    pub(crate) fn refused(&self, credential: &Credential) {
        if let Source::Provider(provider) = &self.source {
            provider.refused(credential);
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::None => "none",
            Source::Password(_) => "the URL's password",
            Source::Provider(_) => "a credential provider",
        };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("source", &source)
            .finish()
    }
}

/// Whether fred's error is the server refusing the password or token (`WRONGPASS`, Redis 6+).
pub(crate) fn is_refusal(error: &Error) -> bool {
    *error.kind() == ErrorKind::Auth && error.details().starts_with("WRONGPASS")
}

/// A provider's failure, as fred's error: of kind `Auth` (not `Config`, which would stop a shared
/// client's reconnects for good), saying it was the provider's.
fn provider_failed(e: pool_core::CredentialError) -> Error {
    Error::new(ErrorKind::Auth, format!("the pool's credential provider failed: {e}"))
}

/// pool-core's provider as fred's, for one client: fred asks it before each `AUTH` of a connect
/// or reconnect. It keeps the credential it handed out last, so a refusal can be reported.
pub(crate) struct FredCredentials {
    provider: Arc<dyn CredentialProvider>,
    username: Option<String>,
    last: Mutex<Option<Credential>>,
}

impl FredCredentials {
    /// Reports the last credential handed out as refused, if `error` says the server refused it.
    pub(crate) fn check(&self, error: &Error) {
        if !is_refusal(error) {
            return;
        }
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(credential) = last {
            self.provider.refused(&credential);
        }
    }
}

impl fmt::Debug for FredCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FredCredentials")
            .field("provider", &self.provider)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl fred::types::config::CredentialProvider for FredCredentials {
    async fn fetch(&self, _: Option<&Server>) -> Result<(Option<String>, Option<String>), Error> {
        let credential = self.provider.credential().await.map_err(provider_failed)?;
        let secret = credential.expose().to_owned();
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(credential);
        Ok((self.username.clone(), Some(secret)))
    }
}
