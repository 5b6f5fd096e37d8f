//! Tests of the credential providers, on tokio's paused clock where time matters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// The IAM shape: every fetch takes `latency` (a call to a token service) and returns a new
/// token, `token-1`, `token-2`..., valid `valid_for`; it can be made to fail.
#[derive(Debug)]
struct TokenService {
    latency: Duration,
    valid_for: Duration,
    issued: AtomicU64,
    failing: Mutex<bool>,
}

impl TokenService {
    fn new(latency: Duration, valid_for: Duration) -> Arc<Self> {
        Arc::new(TokenService {
            latency,
            valid_for,
            issued: AtomicU64::new(0),
            failing: Mutex::new(false),
        })
    }

    fn fail(&self, failing: bool) {
        *self.failing.lock().unwrap() = failing;
    }
}

#[async_trait]
impl CredentialProvider for TokenService {
    async fn credential(&self) -> Result<Credential, CredentialError> {
        tokio::time::sleep(self.latency).await;
        if *self.failing.lock().unwrap() {
            return Err(CredentialError::provider("the token service answered 503"));
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Credential::expiring_in(format!("token-{n}"), self.valid_for))
    }
}

#[tokio::test]
async fn a_static_provider_always_gives_its_credential() {
    let provider = StaticCredentials::password("hunter2");
    for _ in 0..3 {
        let c = provider.credential().await.unwrap();
        assert_eq!((c.expose(), c.expires_at()), ("hunter2", None));
    }
    let shown = format!("{provider:?} {:?}", provider.credential().await.unwrap());
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test(start_paused = true)]
async fn nothing_shows_a_secret() {
    let token = "eu-west-1.rds.amazonaws.com:5432/?Action=connect&X-Amz-Signature=abcdef";
    let url = "postgres://app:hunter2@db/app";
    for secret in [token, url, "hunter2"] {
        let c = Credential::expiring_in(secret, Duration::from_secs(900));
        let shown = format!("{c:?}");
        assert_eq!(shown, "Credential { secret: ***, expires_in: Some(900s) }");
    }
    let e = CredentialError::provider("token service said 403");
    assert_eq!(e.to_string(), "the credential provider failed: token service said 403");
}

#[tokio::test(start_paused = true)]
async fn a_cached_token_is_kept_until_its_refresh_point_then_fetched_again() {
    let service = TokenService::new(Duration::from_millis(200), Duration::from_secs(900));
    let cached = CachedCredentials::new(Arc::clone(&service));
    let first = cached.credential().await.unwrap();
    assert_eq!(first.expose(), "token-1");
    // Until a minute before its expiry, no call reaches the service.
    tokio::time::advance(Duration::from_secs(838)).await;
    assert_eq!(cached.credential().await.unwrap().expose(), "token-1");
    assert_eq!(cached.fetches(), 1);
    // Due: still handed out, and the next is fetched in the background.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(cached.credential().await.unwrap().expose(), "token-1");
    assert_eq!(cached.fetches(), 2);
    tokio::time::sleep(Duration::from_secs(1)).await; // the fetch takes 200 ms
    assert_eq!(cached.credential().await.unwrap().expose(), "token-2");
    assert_eq!(cached.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_short_lived_token_is_refreshed_at_half_its_life_not_fetched_on_every_call() {
    let service = TokenService::new(Duration::ZERO, Duration::from_secs(20));
    let cached = CachedCredentials::new(Arc::clone(&service)); // margin 60 s > the life
    assert_eq!(cached.credential().await.unwrap().expose(), "token-1");
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(cached.credential().await.unwrap().expose(), "token-1");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(cached.credential().await.unwrap().expose(), "token-1", "due, fetched behind");
    tokio::task::yield_now().await;
    assert_eq!(cached.credential().await.unwrap().expose(), "token-2");
    assert_eq!(cached.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn many_connects_waiting_for_a_token_share_one_fetch() {
    let service = TokenService::new(Duration::from_secs(1), Duration::from_secs(900));
    let cached = Arc::new(CachedCredentials::new(Arc::clone(&service)));
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let cached = Arc::clone(&cached);
            tokio::spawn(async move { cached.credential().await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap().expose(), "token-1");
    }
    assert_eq!((cached.fetches(), service.issued.load(Ordering::Relaxed)), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_fails_every_caller_that_waited_for_it_then_the_next_call_tries_again() {
    let service = TokenService::new(Duration::from_secs(1), Duration::from_secs(900));
    service.fail(true);
    let cached = Arc::new(CachedCredentials::new(Arc::clone(&service)));
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let cached = Arc::clone(&cached);
            tokio::spawn(async move { cached.credential().await })
        })
        .collect();
    for caller in callers {
        let e = caller.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("503"), "{e}");
    }
    assert_eq!(cached.fetches(), 1);
    service.fail(false);
    assert_eq!(cached.credential().await.unwrap().expose(), "token-1");
    assert_eq!(cached.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn while_a_due_token_is_refreshed_callers_get_the_old_one_without_waiting() {
    let service = TokenService::new(Duration::from_secs(5), Duration::from_secs(120));
    let cached = Arc::new(CachedCredentials::new(Arc::clone(&service)));
    assert_eq!(cached.credential().await.unwrap().expose(), "token-1");
    tokio::time::advance(Duration::from_secs(61)).await; // due at 65 s, expires at 125 s
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(cached.credential().await.unwrap().expose(), "token-1");
    }
    assert_eq!(Instant::now(), started, "the old token came without a wait");
    assert_eq!(cached.fetches(), 2, "one refresh for all of them");
    tokio::time::sleep(Duration::from_secs(6)).await; // the fetch takes 5 s
    assert_eq!(cached.credential().await.unwrap().expose(), "token-2");
}

#[tokio::test(start_paused = true)]
async fn a_fetch_outlives_the_caller_that_gave_up_on_it() {
    // A token service slower than the connect that asked: the connect times out, the fetch
    // goes on, and the next connect gets its token without a second fetch.
    let service = TokenService::new(Duration::from_secs(8), Duration::from_secs(900));
    let cached = CachedCredentials::new(Arc::clone(&service));
    let gave_up = tokio::time::timeout(Duration::from_secs(5), cached.credential()).await;
    assert!(gave_up.is_err());
    let started = Instant::now();
    assert_eq!(cached.credential().await.unwrap().expose(), "token-1");
    assert_eq!(Instant::now() - started, Duration::from_secs(3), "it waited for the same fetch");
    assert_eq!(cached.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_panics_fails_the_waiting_callers_and_the_next_call_tries_again() {
    let calls = Arc::new(AtomicU64::new(0));
    let cached = {
        let calls = Arc::clone(&calls);
        CachedCredentials::new(FnCredentials::new(move || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                assert!(n > 0, "the token service's client panicked");
                Ok(Credential::new("fine"))
            }
        }))
    };
    let e = cached.credential().await.unwrap_err();
    assert!(e.to_string().contains("panicked"), "{e}");
    assert_eq!(cached.credential().await.unwrap().expose(), "fine");
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_token_that_still_works_until_it_expires() {
    let service = TokenService::new(Duration::ZERO, Duration::from_secs(120));
    let cached = CachedCredentials::new(Arc::clone(&service));
    assert_eq!(cached.credential().await.unwrap().expose(), "token-1");
    service.fail(true);
    tokio::time::advance(Duration::from_secs(100)).await;
    assert_eq!(cached.credential().await.unwrap().expose(), "token-1");
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(cached.credential().await.is_err(), "expired, and no new one");
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_is_dropped_once_and_the_next_call_fetches_a_new_one() {
    let service = TokenService::new(Duration::ZERO, Duration::from_secs(900));
    let cached = CachedCredentials::new(Arc::clone(&service));
    let old = cached.credential().await.unwrap();
    cached.refused(&old);
    let new = cached.credential().await.unwrap();
    assert_eq!(new.expose(), "token-2");
    // A second connect that failed with the old token does not throw away the new one.
    cached.refused(&old);
    assert_eq!(cached.credential().await.unwrap().expose(), "token-2");
    assert_eq!(cached.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_provider_handing_out_an_expired_token_is_an_error() {
    let cached = CachedCredentials::new(FnCredentials::new(|| async {
        Ok(Credential::expiring_in("stale", Duration::ZERO))
    }));
    assert!(matches!(cached.credential().await, Err(CredentialError::Expired)));
}

/// Tokens valid 15 minutes, fetched in 300 ms, asked for every 10 s over four hours: the
/// cache never hands out an expired token and fetches about once per 14 minutes.
#[tokio::test(start_paused = true)]
async fn expiring_tokens_over_hours_are_never_handed_out_expired() {
    let service = TokenService::new(Duration::from_millis(300), Duration::from_secs(900));
    let cached = CachedCredentials::new(Arc::clone(&service));
    let start = Instant::now();
    let mut seen = Vec::new();
    while Instant::now() - start < Duration::from_secs(4 * 3600) {
        let c = cached.credential().await.unwrap();
        assert!(!c.is_expired(), "{c:?} at {:?}", Instant::now() - start);
        // Refreshed a minute ahead, in the background: never close to its expiry.
        assert!(c.expires_at().unwrap() - Instant::now() >= Duration::from_secs(50), "{c:?}");
        if seen.last() != Some(&c.expose().to_owned()) {
            seen.push(c.expose().to_owned());
        }
        // Time passes with the runtime running, so a background fetch ends when it would.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    // A token is due 14 minutes after its fetch and found due at the next 10 s tick: one
    // fetch every 850 s, so 17 in 4 hours (at 0, 850 s, ... 13 600 s).
    assert_eq!(cached.fetches(), 17);
    assert_eq!(seen.len(), 17);
}

#[test]
fn a_password_file_is_read_again_when_it_changes() {
    let dir = test_dir("changes");
    let path = dir.join("password");
    std::fs::write(&path, "first\n").unwrap();
    let file = FileCredentials::new(&path);
    assert_eq!(file.read().unwrap().expose(), "first", "the line break is dropped");
    // Rewritten as a rotator does: a new file moved over the old (a new inode).
    let next = dir.join("password.new");
    std::fs::write(&next, "second second\r\n").unwrap();
    std::fs::rename(&next, &path).unwrap();
    assert_eq!(file.read().unwrap().expose(), "second second");
    // Rewritten in place, same length: the inode stays and the time may not move, so the file
    // is read again after the server refuses what was read.
    std::fs::write(&path, "changed again\r\n").unwrap();
    let read = file.read().unwrap();
    if read.expose() == "second second" {
        file.refused(&read);
    }
    assert_eq!(file.read().unwrap().expose(), "changed again");
}

#[test]
fn a_missing_or_empty_password_file_is_an_error_naming_the_file_not_its_contents() {
    let dir = test_dir("missing");
    let missing = dir.join("nowhere");
    let e = FileCredentials::new(&missing).read().unwrap_err();
    let shown = e.to_string();
    assert!(shown.starts_with("cannot read the password file ") && shown.contains("nowhere"));
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n\n").unwrap();
    let e = FileCredentials::new(&empty).read().unwrap_err();
    assert_eq!(e.to_string(), format!("the password file {} is empty", empty.display()));
}

#[tokio::test]
async fn providers_are_object_safe_and_an_arc_of_one_is_one() {
    let file: Arc<dyn CredentialProvider> = Arc::new(StaticCredentials::password("p"));
    let shared = Arc::new(StaticCredentials::password("q"));
    let as_dyn: Arc<dyn CredentialProvider> = Arc::new(Arc::clone(&shared));
    assert_eq!(file.credential().await.unwrap().expose(), "p");
    assert_eq!(as_dyn.credential().await.unwrap().expose(), "q");
}

/// A fresh directory for one test under the system's temporary directory.
fn test_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("pool-core-credentials-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
