//! `pool-redis` on production-shaped connections, against throwaway servers: TLS (the right CA
//! and host name; a wrong CA, a wrong host name, an expired certificate, a plaintext server;
//! client certificates with `tls-auth-clients yes`), everything the pool does over TLS (both
//! paths, the reset on return, health, a connection killed server-side), passwords rotated
//! under load, tokens that expire during a run, `connect_commands` and the connect hook across
//! resets and reconnects, and Unix sockets.
//!
//! Each server has a plaintext port beside its TLS port for the test's own admin client
//! (`CLIENT LIST`, `CLIENT KILL`, `CONFIG SET`); the pools connect over TLS only.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_core::{CachedCredentials, CloseReason, Credential, CredentialError, FnCredentials};
use pool_harness::{RedisInstance, TestPki};
use pool_redis::fred::prelude::*;
use pool_redis::fred::types::client::{ClientKillFilter, ClientKillType};
use pool_redis::{BuildError, PoolSettings, RedisPool};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Small pools that fail fast.
fn small() -> PoolSettings {
    let mut settings = PoolSettings::default()
        .pool_size(2)
        .max_connections(2)
        .shared_clients(2)
        .command_timeout(Some(Duration::from_secs(5)))
        .shared_command_timeout(Some(Duration::from_secs(5)))
        .max_reconnect_delay(Duration::from_millis(200));
    settings.pool.connect_timeout = Duration::from_secs(5);
    settings.pool.pool_timeout = Duration::from_secs(20);
    settings
}

/// A server with a TLS port (for the pools) and a plaintext one (for the test's admin client),
/// started with `args`.
fn tls_server(pki: &TestPki, args: &[&str]) -> anyhow::Result<RedisInstance> {
    RedisInstance::builder().tls(pki.server(), pki.ca_pem()).plaintext_port().args(args).start()
}

/// `rediss://` on the server's TLS port, with `userinfo` (`:password@`, or empty).
fn tls_url(redis: &RedisInstance, userinfo: &str) -> String {
    let port = redis.tls_port().expect("a TLS server");
    format!("rediss://{userinfo}127.0.0.1:{port}")
}

/// A plain fred client on the plaintext port, outside any pool, to look at and poke the server.
async fn admin(redis: &RedisInstance, password: Option<&str>) -> Result<Client, Error> {
    let mut config = Config::from_url(&redis.url())?;
    config.password = password.map(str::to_owned);
    let client = Builder::from_config(config).build()?;
    client.init().await?;
    Ok(client)
}

/// `CLIENT LIST` lines, without the admin's own connection.
async fn clients(admin: &Client) -> Result<Vec<String>, Error> {
    let list: String = admin.client_list::<String, String>(None, None).await?;
    Ok(list.lines().filter(|l| !l.contains("cmd=client|list")).map(str::to_owned).collect())
}

/// Polls `CLIENT LIST` until `done` holds for it, for up to 10 s (waiting on the server).
async fn wait_for_clients(
    admin: &Client,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = clients(admin).await?;
        if done(&list) {
            return Ok(list);
        }
        if Instant::now() > deadline {
            return Err(
                format!("gave up after 10s waiting for {what}; CLIENT LIST: {list:#?}").into()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of `name=` in a `CLIENT LIST` line.
fn field(line: &str, name: &str) -> Option<String> {
    line.split(' ').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
}

/// Waits until every exclusive connection given back is through its reset on return.
async fn reset_done(pool: &RedisPool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.engine().state().pool_held > 0 {
        assert!(Instant::now() < deadline, "gave up after 10s waiting for the resets on return");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends `args` as one custom command.
async fn custom(client: &Client, args: &[&str]) -> Result<Value, Error> {
    client.custom(fred::cmd!(args[0]), args[1..].to_vec()).await
}

/// The error of a pool that could not start.
async fn refused(url: &str, settings: PoolSettings) -> BuildError {
    match RedisPool::connect("main", url, settings).await {
        Ok(pool) => panic!("{url} connected: {pool:?}"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_the_right_ca_both_paths_resets_and_health_work() -> TestResult {
    let pki = TestPki::generate()?;
    let redis = tls_server(&pki, &[])?;
    let admin = admin(&redis, None).await?;
    let port = redis.tls_port().expect("a TLS server");
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("rediss://{host}:{port}/2");
        // One exclusive connection, so the next checkout is the one given back.
        let settings = small().pool_size(1).max_connections(1).tls_ca_cert(pki.ca_pem());
        let pool = RedisPool::connect("main", &url, settings).await?;
        pool.shared().set::<(), _, _>("k", host, None, None, false).await?;

        // An optimistic transaction, then the reset on return: same connection, clean session.
        let conn = pool.exclusive().await?;
        let id: i64 = conn.client_id().await?;
        conn.watch("k").await?;
        let trx = conn.multi();
        trx.set::<(), _, _>("k", format!("{host} again"), None, None, false).await?;
        let committed: Option<Vec<Value>> = trx.exec(true).await?;
        assert!(committed.is_some(), "nobody touched k");
        custom(conn.client(), &["CLIENT", "SETNAME", "dirty"]).await?;
        custom(conn.client(), &["SELECT", "5"]).await?;
        drop(conn);
        reset_done(&pool).await;
        let conn = pool.exclusive().await?;
        let info: String = conn.client_info().await?;
        assert_eq!(field(info.trim(), "id"), Some(id.to_string()), "reset, not replaced: {info}");
        assert_eq!(
            (field(&info, "name"), field(&info, "db")),
            (Some(String::new()), Some("2".into()))
        );
        assert_eq!(conn.get::<Option<String>, _>("k").await?, Some(format!("{host} again")));
        drop(conn);

        let health = pool_core::DynPool::health(&pool).await;
        assert!(health.healthy, "{health:?}");
        assert_eq!(pool.stats().engine.closed.get(CloseReason::FailedReset), 0);
        // Every connection of the pool came in on the TLS port, none on the admin's.
        let list = clients(&admin).await?;
        let tls_port = format!(":{port}");
        let on_tls = |l: &String| field(l, "laddr").is_some_and(|a| a.ends_with(&tls_port));
        assert!(!list.is_empty() && list.iter().all(on_tls), "{list:#?}");
        pool.close().await?;
    }
    Ok(())
}

/// A handshake that cannot be made as asked fails at once, saying why in TLS terms and naming
/// the pool, without the URL's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_host_name_or_certificate_or_a_plaintext_server_fails_saying_why() -> TestResult
{
    let pki = TestPki::generate()?;
    let good = tls_server(&pki, &[])?;
    let other_name = pki.issue_server(&["redis.invalid"])?;
    let mismatched =
        RedisInstance::builder().tls(&other_name, pki.ca_pem()).plaintext_port().start()?;
    let expired = RedisInstance::builder()
        .tls(pki.expired_server(), pki.ca_pem())
        .plaintext_port()
        .start()?;
    let plaintext = RedisInstance::start()?;
    let plaintext_url = plaintext.url().replace("redis://", "rediss://:hunter2@");
    for (url, ca, says) in [
        (tls_url(&good, ":hunter2@"), pki.other_ca_pem(), "unknown CA"),
        (tls_url(&mismatched, ":hunter2@"), pki.ca_pem(), "hostname mismatch"),
        (tls_url(&expired, ":hunter2@"), pki.ca_pem(), "certificate has expired"),
        (plaintext_url, pki.ca_pem(), "does not speak TLS"),
    ] {
        let err = refused(&url, small().tls_ca_cert(ca)).await;
        let msg = err.to_string();
        assert!(matches!(err, BuildError::Connect { .. }), "{msg}");
        assert!(
            msg.starts_with("Redis pool \"main\" cannot connect to rediss://:***@127.0.0.1:"),
            "{msg}"
        );
        assert!(msg.contains(says) && msg.contains("TLS Error: TLS with 127.0.0.1:"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }
    // Without a CA file the system's CAs are trusted, and none of them signed the test CA.
    let err = refused(&tls_url(&good, ""), small()).await.to_string();
    assert!(err.contains("unknown CA") && err.contains("set tls_ca_cert"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_where_the_server_requires_one() -> TestResult {
    let pki = TestPki::generate()?;
    let redis = RedisInstance::builder()
        .tls(pki.server(), pki.ca_pem())
        .tls_auth_clients(pki.client())
        .plaintext_port()
        .start()?;
    let url = tls_url(&redis, "");
    let client = pki.issue_client("app")?;
    let settings = small().tls_ca_cert(pki.ca_pem()).tls_client_cert(&client.cert, &client.key);
    let pool = RedisPool::connect("main", &url, settings).await?;
    pool.shared().ping::<()>(None).await?;
    let conn = pool.exclusive().await?;
    conn.set::<(), _, _>("k", "v", None, None, false).await?;
    drop(conn);
    assert!(pool_core::DynPool::health(&pool).await.healthy);
    pool.close().await?;

    let err = refused(&url, small().tls_ca_cert(pki.ca_pem())).await.to_string();
    assert!(err.contains("requires a client certificate"), "{err}");
    let untrusted = pki.issue_untrusted_client("app")?;
    let settings =
        small().tls_ca_cert(pki.ca_pem()).tls_client_cert(&untrusted.cert, &untrusted.key);
    let err = refused(&url, settings).await.to_string();
    assert!(err.contains("refused the client certificate"), "{err}");
    Ok(())
}

/// `CLIENT KILL` of every connection: the shared clients reconnect over TLS by themselves, the
/// exclusive connections are replaced at checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_killed_server_side_are_replaced() -> TestResult {
    let pki = TestPki::generate()?;
    let redis = tls_server(&pki, &[])?;
    let admin = admin(&redis, None).await?;
    let pool =
        RedisPool::connect("main", &tls_url(&redis, ""), small().tls_ca_cert(pki.ca_pem())).await?;
    pool.warmed(Duration::from_secs(10)).await?;
    let before = wait_for_clients(&admin, "4 pool connections", |l| l.len() == 4).await?;
    let old_ids: Vec<String> = before.iter().filter_map(|l| field(l, "id")).collect();
    let killed: i64 = admin
        .client_kill(vec![
            ClientKillFilter::Type(ClientKillType::Normal),
            ClientKillFilter::SkipMe(true),
        ])
        .await?;
    assert_eq!(killed, 4);
    wait_for_clients(&admin, "the shared clients to reconnect", |l| {
        l.len() == 2 && l.iter().filter_map(|l| field(l, "id")).all(|id| !old_ids.contains(&id))
    })
    .await?;
    for _ in 0..4 {
        pool.shared().ping::<()>(None).await?;
    }
    let (a, b) = (pool.exclusive().await?, pool.exclusive().await?);
    for conn in [&a, &b] {
        let id: i64 = conn.client_id().await?;
        assert!(!old_ids.contains(&id.to_string()), "a fresh connection, not a killed one");
    }
    drop((a, b));
    assert_eq!(pool.engine().stats().closed.get(CloseReason::Broken), 2);
    pool.close().await?;
    Ok(())
}

/// Checks out `n` exclusive connections at once.
async fn hold(
    pool: &RedisPool,
    n: usize,
) -> Result<Vec<pool_redis::ExclusiveConnection>, pool_redis::AcquireError> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.exclusive().await?);
    }
    Ok(held)
}

/// Tasks that run commands through both paths until stopped, keeping every failure.
struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `tasks` tasks, each alternating an `INCR` on an exclusive connection and one on a shared
    /// client.
    fn start(pool: &RedisPool, tasks: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..tasks)
            .map(|i| {
                let (pool, stop, ops) = (pool.clone(), Arc::clone(&stop), Arc::clone(&ops));
                let failures = Arc::clone(&failures);
                tokio::spawn(async move {
                    let key = format!("load:{i}");
                    while !stop.load(Relaxed) {
                        let exclusive = async {
                            let conn = pool.exclusive().await.map_err(|e| e.to_string())?;
                            conn.incr::<i64, _>(&key).await.map_err(|e| e.to_string())
                        };
                        let shared = pool.shared().incr::<i64, _>(&key);
                        let results = [exclusive.await, shared.await.map_err(|e| e.to_string())];
                        for result in results {
                            match result {
                                Ok(_) => ops.fetch_add(1, Relaxed),
                                Err(e) => {
                                    failures.lock().unwrap().push(e);
                                    0
                                }
                            };
                        }
                    }
                })
            })
            .collect();
        Load { stop, ops, failures, tasks }
    }

    /// Waits until `n` more commands than now have succeeded, for up to 20 s.
    async fn run_for(&self, n: u64) {
        let target = self.ops.load(Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ops.load(Relaxed) < target {
            assert!(Instant::now() < deadline, "the load stalled: {:?}", self.failures.lock());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the tasks and returns every failure they saw.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Relaxed);
        for task in self.tasks {
            task.await.expect("a load task panicked");
        }
        std::mem::take(&mut *self.failures.lock().unwrap())
    }
}

/// A password rotated under load, twice: replaced at once on the server (`CONFIG SET
/// requirepass`) and then in the provider, and the other way round without a gap (`ACL SETUSER`
/// adds the new one, the provider switches, the old one goes). No command and no checkout fails,
/// a connection held across both keeps working, and new connections, exclusive or shared, log
/// in with the provider's current password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_rotated_under_load_fail_no_command() -> TestResult {
    let pki = TestPki::generate()?;
    let redis = tls_server(&pki, &["--requirepass", "first"])?;
    let admin = admin(&redis, Some("first")).await?;
    let password = Arc::new(Mutex::new("first".to_owned()));
    let current = Arc::clone(&password);
    let provider = FnCredentials::new(move || {
        let secret = current.lock().unwrap().clone();
        async move { Ok(Credential::new(secret)) }
    });
    let settings =
        small().pool_size(3).max_connections(6).tls_ca_cert(pki.ca_pem()).credentials(provider);
    let pool = RedisPool::connect("main", &tls_url(&redis, ""), settings).await?;
    let held = pool.exclusive().await?;
    let held_id: i64 = held.client_id().await?;
    let load = Load::start(&pool, 4);
    load.run_for(200).await;

    custom(&admin, &["CONFIG", "SET", "requirepass", "second"]).await?;
    *password.lock().unwrap() = "second".to_owned();
    load.run_for(200).await;
    // Every connection the pool may open, so some are new ones, opened with `second`.
    drop(hold(&pool, 5).await?);
    load.run_for(200).await;

    custom(&admin, &["ACL", "SETUSER", "default", ">third"]).await?;
    *password.lock().unwrap() = "third".to_owned();
    custom(&admin, &["ACL", "SETUSER", "default", "<second"]).await?;
    load.run_for(200).await;
    drop(hold(&pool, 5).await?);
    load.run_for(200).await;
    let failures = load.stop().await;
    assert_eq!(failures, Vec::<String>::new(), "no command or checkout fails");

    let still: i64 = held.client_id().await?;
    assert_eq!(still, held_id, "the held connection kept working");
    held.incr::<i64, _>("held").await?;
    // Given back, it logs in again after `RESET` with the provider's password of now, not the
    // one it opened with (which no longer works), and is kept.
    reset_done(&pool).await;
    let failed_resets = pool.stats().engine.closed.get(CloseReason::FailedReset);
    drop(held);
    reset_done(&pool).await;
    assert_eq!(pool.stats().engine.closed.get(CloseReason::FailedReset), failed_resets);
    // The shared clients reconnect with `third`: the URL has no password.
    let killed: i64 = admin
        .client_kill(vec![
            ClientKillFilter::Type(ClientKillType::Normal),
            ClientKillFilter::SkipMe(true),
        ])
        .await?;
    assert!(killed >= 2, "{killed}");
    wait_for_clients(&admin, "the shared clients to reconnect", |l| l.len() >= 2).await?;
    for _ in 0..4 {
        pool.shared().incr::<i64, _>("after").await?;
    }
    let conns = hold(&pool, 6).await?;
    for conn in &conns {
        conn.incr::<i64, _>("after").await?;
    }
    drop(conns);
    pool.close().await?;
    Ok(())
}

/// Tokens that expire during the run, the shape of the cloud's IAM authentication: a token
/// service mints each token for an ACL user and withdraws it when it expires, and the pool keeps
/// them in [`CachedCredentials`]. Connections are recycled every 300 ms and every return
/// authenticates again, always with a live token; no command fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_expire_during_the_run_fail_no_command() -> TestResult {
    const VALID: Duration = Duration::from_millis(1500);
    let pki = TestPki::generate()?;
    // The user `app` has no password of its own: only the tokens minted below log it in.
    let redis = tls_server(&pki, &["--user", "app", "on", "~*", "&*", "+@all"])?;
    let admin = admin(&redis, None).await?;
    let minted = Arc::new(AtomicUsize::new(0));
    let (service, count) = (admin.clone(), Arc::clone(&minted));
    let tokens = CachedCredentials::new(FnCredentials::new(move || {
        let (service, n) = (service.clone(), count.fetch_add(1, Relaxed) + 1);
        async move {
            let token = format!("token-{n}");
            let grant = format!(">{token}");
            custom(&service, &["ACL", "SETUSER", "app", &grant])
                .await
                .map_err(CredentialError::provider)?;
            // The service withdraws the token when it expires.
            tokio::spawn(async move {
                tokio::time::sleep(VALID).await;
                let _ = custom(&service, &["ACL", "SETUSER", "app", &format!("<{token}")]).await;
            });
            Ok(Credential::expiring_in(format!("token-{n}"), VALID))
        }
    }));
    let mut settings = small().pool_size(3).max_connections(4).tls_ca_cert(pki.ca_pem());
    settings.pool.pool_recycle = Some(Duration::from_millis(300));
    let pool =
        RedisPool::connect("main", &tls_url(&redis, "app@"), settings.credentials(tokens)).await?;
    let load = Load::start(&pool, 4);
    // Until the fifth token: the first four have expired, or will have by the end.
    let deadline = Instant::now() + Duration::from_secs(20);
    while minted.load(Relaxed) < 5 {
        assert!(Instant::now() < deadline, "no fifth token after 20s: {:?}", load.failures);
        load.run_for(50).await;
    }
    let failures = load.stop().await;
    assert_eq!(failures, Vec::<String>::new(), "no command or checkout fails");
    let created = pool.engine().stats().connections_created;
    assert!(created > 4, "connections were recycled and opened with new tokens: {created}");
    let acl: Vec<String> = admin.custom(fred::cmd!("ACL"), vec!["LIST"]).await?;
    assert!(acl.iter().any(|u| u.starts_with("user app on")), "{acl:?}");
    pool.close().await?;
    Ok(())
}

/// `password_file`: the file is read again when it changes, so a rotated password takes effect
/// for the connections opened after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_rewritten_logs_new_connections_in() -> TestResult {
    let pki = TestPki::generate()?;
    let redis = tls_server(&pki, &["--requirepass", "first"])?;
    let admin = admin(&redis, Some("first")).await?;
    let file = pki.dir().join("redis-password");
    std::fs::write(&file, "first\n")?;
    let settings = small().tls_ca_cert(pki.ca_pem()).password_file(&file);
    let pool = RedisPool::connect("main", &tls_url(&redis, ""), settings).await?;
    drop(hold(&pool, 2).await?);
    reset_done(&pool).await;
    custom(&admin, &["CONFIG", "SET", "requirepass", "second"]).await?;
    // A new file in place of the old, as a secrets agent writes it.
    let next = pki.dir().join("redis-password.new");
    std::fs::write(&next, "second\n")?;
    std::fs::rename(&next, &file)?;
    let killed: i64 = admin
        .client_kill(vec![
            ClientKillFilter::Type(ClientKillType::Normal),
            ClientKillFilter::SkipMe(true),
        ])
        .await?;
    assert_eq!(killed, 4);
    wait_for_clients(&admin, "the shared clients to reconnect", |l| l.len() == 2).await?;
    pool.shared().ping::<()>(None).await?;
    for conn in hold(&pool, 2).await? {
        conn.ping::<()>(None).await?;
    }
    pool.close().await?;
    Ok(())
}

/// `connect_commands` and the hook run on every new connection, exclusive or shared, again after
/// each reset on return (whose `RESET` undid them) and after each reconnect of a shared client;
/// a failing command or hook is a failed connect with its error, and a reset whose hook fails
/// closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_commands_and_the_hook_survive_the_reset_and_reconnects() -> TestResult {
    let redis = RedisInstance::start()?;
    let admin = admin(&redis, None).await?;
    let runs = Arc::new(AtomicUsize::new(0));
    let fail = Arc::new(AtomicBool::new(false));
    let (counted, failing) = (Arc::clone(&runs), Arc::clone(&fail));
    let mut settings = small()
        .pool_size(1)
        .max_connections(1)
        .connect_commands(["CLIENT SETNAME app", "INCR connect-commands-runs"])
        .on_connect(move |client| {
            let (runs, fail) = (Arc::clone(&counted), Arc::clone(&failing));
            async move {
                if fail.load(Relaxed) {
                    return Err(Error::new(ErrorKind::Unknown, "the hook said no"));
                }
                // What the hook sets: a name the commands' one replaces here, as the last word.
                custom(&client, &["CLIENT", "SETNAME", "app-hooked"]).await?;
                runs.fetch_add(1, Relaxed);
                Ok(())
            }
        });
    settings.pool.pool_timeout = Duration::from_secs(1);
    let pool = RedisPool::connect("main", &redis.url(), settings).await?;
    let named = |l: &[String], n: usize| {
        l.len() == n && l.iter().all(|l| field(l, "name").as_deref() == Some("app-hooked"))
    };
    wait_for_clients(&admin, "3 connections named by the hook", |l| named(l, 3)).await?;
    assert_eq!(runs.load(Relaxed), 3, "two shared clients, one exclusive connection");

    let conn = pool.exclusive().await?;
    let id: i64 = conn.client_id().await?;
    custom(conn.client(), &["CLIENT", "SETNAME", "dirty"]).await?;
    custom(conn.client(), &["SELECT", "5"]).await?;
    drop(conn);
    let conn = pool.exclusive().await?;
    let info: String = conn.client_info().await?;
    assert_eq!(field(info.trim(), "id"), Some(id.to_string()), "reset, not replaced: {info}");
    assert_eq!(field(&info, "name").as_deref(), Some("app-hooked"), "{info}");
    assert_eq!(field(&info, "db").as_deref(), Some("0"), "{info}");
    assert_eq!(runs.load(Relaxed), 4, "once more, after the reset");
    let commands: Option<i64> = admin.get("connect-commands-runs").await?;
    assert_eq!(commands, Some(4), "the commands too");
    drop(conn);
    reset_done(&pool).await;

    // The shared clients reconnect, and the hook names them again.
    let killed: i64 = admin
        .client_kill(vec![ClientKillFilter::ID(id.to_string()), ClientKillFilter::SkipMe(true)])
        .await?;
    assert_eq!(killed, 1);
    let shared_ids: Vec<String> =
        clients(&admin).await?.iter().filter_map(|l| field(l, "id")).collect();
    for shared in &shared_ids {
        let _: i64 = admin.client_kill(vec![ClientKillFilter::ID(shared.clone())]).await?;
    }
    wait_for_clients(&admin, "2 reconnected shared clients named by the hook", |l| {
        named(l, 2) && l.iter().filter_map(|l| field(l, "id")).all(|id| !shared_ids.contains(&id))
    })
    .await?;

    // A reset whose hook fails closes the connection; a connect whose hook fails fails.
    let conn = pool.exclusive().await?;
    fail.store(true, Relaxed);
    drop(conn);
    reset_done(&pool).await;
    assert_eq!(pool.stats().engine.closed.get(CloseReason::FailedReset), 1);
    let err = pool.exclusive().await.unwrap_err().to_string();
    assert!(err.contains("the connect hook failed: the hook said no"), "{err}");
    pool.close().await?;

    // A command the server refuses fails the pool's start, naming it.
    let settings = small().connect_commands(["CLIENT SETNAME 'has blanks'"]);
    let err = refused(&redis.url(), settings).await.to_string();
    assert!(
        err.contains(
            "connect_commands[0] (CLIENT SETNAME) failed: ERR Client names cannot contain spaces"
        ),
        "{err}"
    );
    Ok(())
}

/// `redis+unix://` for both paths, with the database of its `db` parameter, which the reset on
/// return selects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_serves_both_paths() -> TestResult {
    let redis = RedisInstance::builder().unix_socket().start()?;
    let admin = admin(&redis, None).await?;
    let url = format!("{}?db=3", redis.unix_url().expect("a socket"));
    let pool = RedisPool::connect("main", &url, small().pool_size(1).max_connections(1)).await?;
    pool.shared().set::<(), _, _>("k", "over the socket", None, None, false).await?;
    let conn = pool.exclusive().await?;
    assert_eq!(conn.get::<Option<String>, _>("k").await?.as_deref(), Some("over the socket"));
    custom(conn.client(), &["SELECT", "5"]).await?;
    drop(conn);
    let conn = pool.exclusive().await?;
    let info: String = conn.client_info().await?;
    assert_eq!(field(&info, "db").as_deref(), Some("3"), "{info}");
    drop(conn);
    assert!(pool_core::DynPool::health(&pool).await.healthy);
    let socket = redis.socket_path().expect("a socket").display().to_string();
    let list = clients(&admin).await?;
    assert_eq!(list.len(), 3, "{list:#?}");
    for line in &list {
        assert!(field(line, "laddr").is_some_and(|a| a.starts_with(&socket)), "{line}");
    }
    custom(&admin, &["SELECT", "3"]).await?;
    assert_eq!(admin.get::<Option<String>, _>("k").await?.as_deref(), Some("over the socket"));
    pool.close().await?;
    Ok(())
}
