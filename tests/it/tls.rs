//! pool-postgres in production shape, against throwaway servers: TLS in every `sslmode` (a
//! trusted and an unknown CA, a host name mismatch, an expired certificate, a server without
//! TLS), client certificates, a TLS connection terminated by the server, password rotation and
//! expiring tokens under load, the connect hook across resets, Unix sockets, and the pool's own
//! machinery (pre-ping, reset on return, a replica and its lag probe) over TLS.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pool_core::{
    CachedCredentials, CloseReason, Credential, CredentialError, FnCredentials, Manager, PoolConfig,
};
use pool_harness::{PgHba, PgInstance, TestPki};
use pool_postgres::sqlx::postgres::PgConnection;
use pool_postgres::sqlx::{self, Connection};
use pool_postgres::{
    ConnectHook, PgCluster, PgError, PgManager, PgPool, PostgresConfig, SslMode, TlsFailure,
    TlsSettings,
};

type Result<T = ()> = anyhow::Result<T>;

/// Runs a blocking harness call (initdb, pg_ctl, psql) without stalling the runtime's other
/// tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A PostgreSQL with TLS on (the PKI's server certificate for `localhost` and `127.0.0.1`),
/// trusting every login, with or without TLS.
fn tls_server(pki: &TestPki) -> Result<PgInstance> {
    blocking(|| PgInstance::builder().ssl(pki.server()).start())
}

/// `postgres://postgres@HOST:PORT/postgres?PARAMS`.
fn url(pg: &PgInstance, host: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{}/postgres?{params}", pg.port())
}

/// Whether the session on `conn` is encrypted, as the server sees it.
async fn encrypted(conn: &mut PgConnection) -> Result<bool> {
    let sql = "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()";
    Ok(sqlx::query_scalar(sql).fetch_one(conn).await?)
}

/// One connect through `manager`, as a pool makes it.
async fn connect(manager: &PgManager) -> std::result::Result<PgConnection, PgError> {
    Ok(manager.connect().await?.into_inner())
}

/// The TLS failure of a connect through `manager`, with its message.
async fn tls_failure(manager: &PgManager) -> (TlsFailure, String) {
    match connect(manager).await {
        Ok(_) => panic!("{manager:?} connected"),
        Err(PgError::Tls(e)) => (e.failure.clone(), e.to_string()),
        Err(other) => panic!("not a TLS failure: {other}"),
    }
}

fn small_pool(manager: PgManager, name: &str, pool_size: usize) -> Result<PgPool> {
    let mut config = PoolConfig::default();
    config.pool_size = pool_size;
    config.max_overflow = 0;
    config.pool_timeout = Duration::from_secs(10);
    config.connect_timeout = Duration::from_secs(5);
    Ok(PgPool::builder(manager).name(name).config(config).build()?)
}

/// Polls `condition` every 10 ms until it holds, failing after `secs` seconds: for waiting on
/// something outside the test's tasks (a server, a pool's background work).
async fn wait_until<F: AsyncFnMut() -> bool>(secs: u64, what: &str, mut condition: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_with_the_right_ca_and_host_name_and_refuses_the_rest() -> Result {
    let pki = TestPki::generate()?;
    let pg = tls_server(&pki)?;
    let ca = pki.ca_pem().display().to_string();
    let other_ca = pki.other_ca_pem().display().to_string();

    // The right CA and a name the certificate lists: both of its names work.
    for host in ["localhost", "127.0.0.1"] {
        let manager =
            PgManager::from_url(&url(&pg, host, &format!("sslmode=verify-full&sslrootcert={ca}")))?;
        assert_eq!(manager.ssl_mode(), SslMode::VerifyFull);
        let mut conn = connect(&manager).await?;
        assert!(encrypted(&mut conn).await?, "verify-full to {host} is not encrypted");
    }

    // An unknown CA.
    let manager = PgManager::from_url(&url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other_ca}"),
    ))?;
    let (failure, shown) = tls_failure(&manager).await;
    assert!(matches!(failure, TlsFailure::UnknownCa { .. }), "{shown}");
    assert_eq!(
        shown,
        format!(
            "cannot connect to localhost:{} with sslmode=verify-full: the server's certificate is \
             signed by an unknown CA: it does not chain to sslrootcert {other_ca} (from the URL) \
             or the public roots built in",
            pg.port()
        )
    );
    // The same refusal through a pool names the pool.
    let mut config = PoolConfig::default();
    config.pool_size = 1;
    config.pool_timeout = Duration::from_millis(500);
    let pool = PgPool::builder(manager).name("tls-unknown-ca").config(config).build()?;
    let err = pool.acquire().await.unwrap_err().to_string();
    assert!(
        err.starts_with("pool \"tls-unknown-ca\" timed out")
            || err.starts_with("pool \"tls-unknown-ca\" is unavailable"),
        "{err}"
    );
    assert!(err.contains("last connect error: cannot connect to localhost"), "{err}");
    assert!(err.contains("signed by an unknown CA"), "{err}");

    // A host name the certificate does not list: refused by verify-full, not by verify-ca.
    let other = pki.issue_server(&["db.example.com"])?;
    let elsewhere = blocking(|| PgInstance::builder().ssl(&other).start())?;
    let at = |mode: &str| url(&elsewhere, "localhost", &format!("sslmode={mode}&sslrootcert={ca}"));
    let (failure, shown) = tls_failure(&PgManager::from_url(&at("verify-full"))?).await;
    let expected = TlsFailure::HostnameMismatch {
        host: "localhost".into(),
        presented: vec!["db.example.com".into()],
    };
    assert_eq!(failure, expected, "{shown}");
    assert!(
        shown.ends_with(
            "the server's certificate does not match the host name \"localhost\" (it names \
             db.example.com); connect by a name it lists, or use sslmode=verify-ca"
        ),
        "{shown}"
    );
    let mut conn = connect(&PgManager::from_url(&at("verify-ca"))?).await?;
    assert!(encrypted(&mut conn).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_by_verifying_modes_and_said_so() -> Result {
    let pki = TestPki::generate()?;
    let pg = blocking(|| PgInstance::builder().ssl(pki.expired_server()).start())?;
    let ca = pki.ca_pem().display().to_string();
    let manager = PgManager::from_url(&url(&pg, "localhost", "sslmode=verify-ca"))?
        .tls(TlsSettings::new().root_cert(&ca));
    let (failure, shown) = tls_failure(&manager).await;
    assert!(matches!(failure, TlsFailure::Expired(_)), "{shown}");
    assert!(shown.contains("the server's certificate has expired (valid until 2000-"), "{shown}");
    // `require` encrypts without checking: it connects.
    let manager = PgManager::from_url(&url(&pg, "localhost", "sslmode=require"))?;
    let mut conn = connect(&manager).await?;
    assert!(encrypted(&mut conn).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_without_a_ca_encrypts_and_prefer_falls_back_to_plaintext_without_tls() -> Result {
    let pki = TestPki::generate()?;
    let with_tls = tls_server(&pki)?;
    // A certificate from a CA the client does not know: `require` checks nothing.
    let mut conn =
        connect(&PgManager::from_url(&url(&with_tls, "127.0.0.1", "sslmode=require"))?).await?;
    assert!(encrypted(&mut conn).await?, "require is not encrypted");
    let mut conn = connect(&PgManager::from_url(&url(&with_tls, "127.0.0.1", ""))?).await?;
    assert!(encrypted(&mut conn).await?, "prefer, the default, did not use the server's TLS");
    let mut conn =
        connect(&PgManager::from_url(&url(&with_tls, "127.0.0.1", "sslmode=disable"))?).await?;
    assert!(!encrypted(&mut conn).await?, "disable is encrypted");

    let without = blocking(PgInstance::start)?;
    let mut conn =
        connect(&PgManager::from_url(&url(&without, "127.0.0.1", "sslmode=prefer"))?).await?;
    assert!(!encrypted(&mut conn).await?);
    for mode in ["require", "verify-full"] {
        let manager = PgManager::from_url(&url(&without, "127.0.0.1", ""))?
            .tls(TlsSettings::new().mode(mode.parse()?).root_cert(pki.ca_pem()));
        let (failure, shown) = tls_failure(&manager).await;
        assert_eq!(failure, TlsFailure::NotSupported, "{shown}");
        assert!(
            shown.ends_with(
                "the server does not support TLS (ssl = off on the server), and sslmode requires it"
            ),
            "{shown}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_where_the_server_accepts_nothing_else() -> Result {
    let pki = TestPki::generate()?;
    let pg = blocking(|| {
        PgInstance::builder().ssl(pki.server()).ssl_ca(pki.ca_pem()).hba(PgHba::ClientCert).start()
    })?;
    let ca = pki.ca_pem().display().to_string();
    let base = url(&pg, "localhost", &format!("sslmode=verify-full&sslrootcert={ca}"));

    // With the certificate issued for the role (its common name), in code.
    let manager = PgManager::from_url(&base)?
        .tls(TlsSettings::new().client_cert(pki.client_cert(), pki.client_key()));
    let pool = small_pool(manager, "tls-client-cert", 1)?;
    let mut conn = pool.acquire().await?;
    assert!(encrypted(&mut conn).await?);
    let user: String =
        sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut *conn).await?;
    assert_eq!(user, pool_harness::CLIENT_ROLE);
    drop(conn);
    pool.close().await?;

    // The same from the URL's parameters.
    let from_url = format!(
        "{base}&sslcert={}&sslkey={}",
        pki.client_cert().display(),
        pki.client_key().display()
    );
    connect(&PgManager::from_url(&from_url)?).await?;

    // Without one: the server's own refusal.
    let err = connect(&PgManager::from_url(&base)?).await.unwrap_err().to_string();
    assert!(err.contains("connection requires a valid client certificate"), "{err}");

    // With one the server's CA did not sign: refused in the handshake, and said so.
    let untrusted = pki.issue_untrusted_client(pool_harness::CLIENT_ROLE)?;
    let manager = PgManager::from_url(&base)?
        .tls(TlsSettings::new().client_cert(&untrusted.cert, &untrusted.key));
    let (failure, shown) = tls_failure(&manager).await;
    assert!(matches!(failure, TlsFailure::Refused { .. }), "{shown}");
    assert!(shown.contains("the server refused the TLS handshake"), "{shown}");
    assert!(
        shown.contains(&format!(
            "it did not accept the client certificate sslcert {}",
            untrusted.cert.display()
        )),
        "{shown}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_pre_pings_resets_and_replaces_terminated_connections_over_tls() -> Result {
    let pki = TestPki::generate()?;
    let pg = tls_server(&pki)?;
    let ca = pki.ca_pem().display().to_string();
    let manager = PgManager::from_url(&url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))?;
    let mut config = PoolConfig::default();
    config.pool_size = 1;
    config.max_overflow = 0;
    config.pre_ping_bypass = Duration::ZERO; // every checkout pings
    let pool = PgPool::builder(manager).name("tls-machinery").config(config).build()?;
    let mut observer = PgConnection::connect(&pg.url()).await?;

    // Reset on return: the session's change is gone, on the same TLS connection.
    let mut conn = pool.acquire().await?;
    assert!(encrypted(&mut conn).await?);
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    sqlx::query("SET search_path TO pg_catalog").execute(&mut *conn).await?;
    drop(conn);
    let mut conn = pool.acquire().await?;
    let again: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    let path: String = sqlx::query_scalar("SHOW search_path").fetch_one(&mut *conn).await?;
    assert_eq!((again, path.as_str()), (pid, "\"$user\", public"), "reset in place over TLS");
    drop(conn);

    // Terminated while idle (once its reset is done): the pre-ping finds it, and the checkout
    // gets a new connection.
    wait_until(10, "the connection is reset and idle", async || pool.stats().idle == 1).await;
    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut observer).await?;
    let mut conn = pool.acquire().await?;
    let new: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    assert_ne!(new, pid);
    assert!(encrypted(&mut conn).await?);
    // Terminated while in use: the query fails, the connection is closed on return and
    // replaced.
    sqlx::query("SELECT pg_terminate_backend($1)").bind(new).execute(&mut observer).await?;
    assert!(sqlx::query("SELECT 1 + 1").execute(&mut *conn).await.is_err());
    assert!(conn.is_broken());
    drop(conn);
    let mut conn = pool.acquire().await?;
    let third: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    assert!(third != new && encrypted(&mut conn).await?);
    let closed = pool.stats().closed;
    let (broken, failed_check) =
        (closed.get(CloseReason::Broken), closed.get(CloseReason::FailedCheck));
    assert_eq!((broken, failed_check), (1, 1), "{closed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_and_its_lag_probe_work_over_tls() -> Result {
    let pki = TestPki::generate()?;
    let primary = tls_server(&pki)?;
    let replica = blocking(|| primary.start_replica())?;
    let tls = TlsSettings::new().mode(SslMode::VerifyFull).root_cert(pki.ca_pem());
    let mut config = PoolConfig::default();
    config.pool_size = 2;
    let cluster =
        PgCluster::builder("tls-cluster", PgManager::from_url(&url(&primary, "localhost", ""))?)
            .replica(PgManager::from_url(&url(&replica, "localhost", ""))?)
            .tls(tls)
            .config(config)
            .lag_probe_interval(Some(Duration::from_millis(50)))
            .build()?;
    wait_until(10, "the lag probe measured the replica over TLS", async || {
        cluster.stats().replicas[0].replay_lsn.is_some()
    })
    .await;
    let stats = cluster.stats();
    assert!(!stats.replicas[0].banned, "{stats:?}");
    let mut read = cluster.session_read_only().await?;
    let recovering: bool =
        sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut *read).await?;
    assert!(recovering && encrypted(&mut read).await?, "the read is not on the replica over TLS");
    drop(read);
    let mut write = cluster.session().await?;
    assert!(encrypted(&mut write).await?);
    drop(write);
    cluster.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_rotated_under_load_fails_no_acquire() -> Result {
    let pg = Arc::new(blocking(|| {
        PgInstance::builder().hba(PgHba::ScramSha256).role_with_password("app", "first").start()
    })?);
    let app_url = format!("postgres://app@127.0.0.1:{}/postgres?sslmode=disable", pg.port());

    // A connect refused with the credential a cache kept from before a rotation tells the
    // provider, which fetches the new one, and gets in on its second try: no failed connect.
    let current = Arc::new(std::sync::Mutex::new("first".to_owned()));
    let cached = Arc::new(CachedCredentials::new(FnCredentials::new({
        let current = Arc::clone(&current);
        move || {
            let password = current.lock().unwrap().clone();
            async move { Ok(Credential::new(password)) }
        }
    })));
    let manager = PgManager::from_url(&app_url)?.with_shared_credentials(Arc::clone(&cached) as _);
    let mut opened_before = connect(&manager).await?;
    *current.lock().unwrap() = "second".to_owned();
    let pg2 = Arc::clone(&pg);
    tokio::task::spawn_blocking(move || pg2.set_password("app", "second")).await??;
    connect(&manager).await?;
    assert_eq!(cached.fetches(), 2, "the refused credential was fetched again, once");
    // A connection opened with the old password keeps working.
    sqlx::query("SELECT 1 + 1").execute(&mut opened_before).await?;
    let pg2 = Arc::clone(&pg);
    tokio::task::spawn_blocking(move || pg2.set_password("app", "first")).await??;

    let dir = pg.dir().join("secrets");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("db-password");
    // As Vault agent writes it: a new file moved over the old one.
    let write = |password: &str| -> Result {
        let next = dir.join("db-password.new");
        std::fs::write(&next, format!("{password}\n"))?;
        std::fs::rename(&next, &file)?;
        Ok(())
    };
    write("first")?;

    // The whole path a deployment takes: a configuration with `password_file`.
    let mut config = PostgresConfig::default();
    config.url = app_url.as_str().into();
    config.password_file = Some(file.clone());
    config.pool.pool_size = 4;
    config.pool.max_overflow = 4;
    config.pool.pool_recycle = Some(Duration::from_millis(150)); // connects all the time
    config.pool.pool_timeout = Duration::from_secs(20);
    let cluster = config.build("rotation")?;

    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (cluster, stop, queries) = (cluster.clone(), Arc::clone(&stop), Arc::clone(&queries));
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match cluster.session().await {
                    Ok(mut conn) => match sqlx::query_scalar::<_, i32>("SELECT 1 + 1")
                        .fetch_one(&mut *conn)
                        .await
                    {
                        Ok(_) => {
                            queries.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(format!("query: {e}")),
                    },
                    Err(e) => failures.push(format!("acquire: {e}")),
                }
            }
            failures
        }));
    }
    let created = || cluster.primary().stats().connections_created;
    for round in 1..=4 {
        let password = format!("rotated-{round}");
        // The rotator's order: the new password is written, then the server takes it.
        write(&password)?;
        let (pg2, pw) = (Arc::clone(&pg), password.clone());
        tokio::task::spawn_blocking(move || pg2.set_password("app", &pw)).await??;
        let before = created();
        wait_until(
            20,
            &format!("round {round}: 8 connections opened with the new password"),
            async || created() >= before + 8,
        )
        .await;
        // The old password no longer logs in: the rotation was real.
        let old = if round == 1 { "first".to_owned() } else { format!("rotated-{}", round - 1) };
        let refused = PgConnection::connect(&format!(
            "postgres://app:{old}@127.0.0.1:{}/postgres?sslmode=disable",
            pg.port()
        ))
        .await;
        assert!(refused.is_err(), "round {round}: the old password still logs in");
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await?);
    }
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
    assert!(queries.load(Ordering::Relaxed) > 0);
    cluster.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_that_expire_during_the_run_are_fetched_again_and_fail_no_acquire() -> Result {
    let pg = Arc::new(blocking(|| {
        PgInstance::builder().hba(PgHba::ScramSha256).role_with_password("app", "bootstrap").start()
    })?);
    // The IAM shape: a token service that issues a new token, valid 2 seconds, on each call;
    // the server takes a token until it expires (`VALID UNTIL`), and only the newest.
    let issued = Arc::new(AtomicU64::new(0));
    let service = {
        let (pg, issued) = (Arc::clone(&pg), Arc::clone(&issued));
        FnCredentials::new(move || {
            let (pg, issued) = (Arc::clone(&pg), Arc::clone(&issued));
            async move {
                let n = issued.fetch_add(1, Ordering::Relaxed) + 1;
                let token = format!("token-{n}-{:x}", fastrand::u64(..));
                let valid = Duration::from_secs(2);
                let sql = format!(
                    "DO $$ BEGIN EXECUTE format('ALTER ROLE app PASSWORD %L VALID UNTIL %L', \
                     '{token}', now() + interval '2 seconds'); END $$"
                );
                tokio::task::spawn_blocking(move || pg.psql(&sql))
                    .await
                    .map_err(CredentialError::provider)?
                    .map_err(|e| CredentialError::provider(e.to_string()))?;
                Ok(Credential::expiring_in(token, valid))
            }
        })
    };
    let tokens = Arc::new(CachedCredentials::new(service));
    let manager = PgManager::from_url(&format!(
        "postgres://app@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port()
    ))?
    .with_shared_credentials(Arc::clone(&tokens) as _);
    let mut config = PoolConfig::default();
    config.pool_size = 4;
    config.max_overflow = 0;
    config.pool_recycle = Some(Duration::from_millis(200));
    config.pool_timeout = Duration::from_secs(20);
    let pool = PgPool::builder(manager).name("tokens").config(config).build()?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (pool, stop) = (pool.clone(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match pool.acquire().await {
                    Ok(mut conn) => {
                        if let Err(e) = sqlx::query("SELECT 1 + 1").execute(&mut *conn).await {
                            failures.push(format!("query: {e}"));
                        }
                    }
                    Err(e) => failures.push(format!("acquire: {e}")),
                }
            }
            failures
        }));
    }
    // Four tokens issued means three expired or replaced while connects went on.
    wait_until(30, "four tokens were issued", async || issued.load(Ordering::Relaxed) >= 4).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await?);
    }
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
    let created = pool.stats().connections_created;
    assert!(
        tokens.fetches() < created,
        "{} fetches for {created} connects: not cached",
        tokens.fetches()
    );
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_connect_hook_sets_survives_the_reset_on_return() -> Result {
    let pg = blocking(PgInstance::start)?;
    let hook: ConnectHook = Arc::new(|conn| {
        Box::pin(async move {
            sqlx::query("SELECT set_config('search_path', 'hooked, public', false)")
                .execute(conn)
                .await?;
            Ok(())
        })
    });
    let mut config = PostgresConfig::default();
    config.url = pg.url().into();
    config.connect_statements = vec![
        "SET application_name = 'from-statements'".into(),
        "SET statement_timeout = '7s';".into(),
    ];
    config.server_settings = BTreeMap::from([("lock_timeout".to_owned(), "3s".to_owned())]);
    config.pool.pool_size = 1;
    config.pool.max_overflow = 0;
    // The configuration's statements and settings, and a hook in code, on one manager.
    let cluster = config.build("hooked")?;
    let pool = PgPool::builder(
        PgManager::from_url(&pg.url())?
            .connect_statements(&config.connect_statements)
            .server_settings(&config.server_settings)
            .after_connect(hook),
    )
    .name("hooked-in-code")
    .pool_size(1)
    .build()?;

    let settings = "SELECT current_setting('application_name') || ' ' || current_setting('statement_timeout') \
                    || ' ' || current_setting('lock_timeout') || ' ' || current_setting('search_path')";
    for (name, expected) in [
        ("config", "from-statements 7s 3s \"$user\", public"),
        ("code", "from-statements 7s 3s hooked, public"),
    ] {
        let acquire = async || match name {
            "config" => anyhow::Ok(cluster.session().await?),
            _ => anyhow::Ok(pool.acquire().await?),
        };
        let mut conn = acquire().await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
        let seen: String = sqlx::query_scalar(settings).fetch_one(&mut *conn).await?;
        assert_eq!(seen, expected, "{name}: after connect");
        // The user changes all four; the reset on return clears them, then the hook's are back.
        sqlx::raw_sql(
            "SET application_name = 'user'; SET statement_timeout = 0; SET lock_timeout = 0; SET search_path = pg_catalog",
        )
        .execute(&mut *conn)
        .await?;
        drop(conn);
        let mut conn = acquire().await?;
        let again: i32 =
            sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
        let seen: String = sqlx::query_scalar(settings).fetch_one(&mut *conn).await?;
        assert_eq!((again, seen.as_str()), (pid, expected), "{name}: after a reset on return");
    }
    cluster.close().await?;

    // A statement that fails is a failed connect carrying its error.
    let mut config = PoolConfig::default();
    config.pool_size = 1;
    config.pool_timeout = Duration::from_millis(500);
    let manager = PgManager::from_url(&pg.url())?.connect_statements(["SET no_such_setting = 1"]);
    let err = connect(&manager).await.unwrap_err();
    assert!(matches!(err, PgError::Hook { .. }), "{err}");
    let pool = PgPool::builder(manager).name("failing-hook").config(config).build()?;
    let err = pool.acquire().await.unwrap_err().to_string();
    // The 500 ms timeout, or the breaker opening at the fifth failure in a row, whichever first.
    assert!(
        err.starts_with("pool \"failing-hook\" timed out")
            || err.starts_with("pool \"failing-hook\" is unavailable"),
        "{err}"
    );
    assert!(err.contains(&format!("the connect hook failed on 127.0.0.1:{}", pg.port())), "{err}");
    assert!(err.contains("unrecognized configuration parameter \"no_such_setting\""), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_url_connects_through_the_socket() -> Result {
    let pg = blocking(PgInstance::start)?;
    let socket_url = pg.socket_url();
    assert!(socket_url.starts_with("postgres:///postgres?host=/"), "{socket_url}");
    // libpq ignores sslmode over a socket (the server offers no TLS there), and so do we.
    for url in [socket_url.clone(), format!("{socket_url}&sslmode=verify-full")] {
        let manager = PgManager::from_url(&url)?;
        let pool = small_pool(manager, "unix-socket", 2)?;
        let mut conn = pool.acquire().await?;
        let address: Option<String> =
            sqlx::query_scalar("SELECT inet_server_addr()::text").fetch_one(&mut *conn).await?;
        assert_eq!(address, None, "{url}: not through the socket");
        sqlx::query("SET search_path TO pg_catalog").execute(&mut *conn).await?;
        drop(conn);
        let mut conn = pool.acquire().await?;
        let path: String = sqlx::query_scalar("SHOW search_path").fetch_one(&mut *conn).await?;
        assert_eq!(path, "\"$user\", public", "reset on return over the socket");
        drop(conn);
        pool.close().await?;
    }
    Ok(())
}

/// libpq's variables apply beneath the URL, as in libpq: `PGSSLMODE=require` makes a URL
/// without `sslmode` refuse a server without TLS, and a URL's own `sslmode` wins. The
/// variables are read from the process's environment, so the test runs itself in a child
/// process with them set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_variables_apply_beneath_the_url() -> Result {
    const CHILD: &str = "POOL_TESTS_LIBPQ_CHILD";
    if let Ok(port) = std::env::var(CHILD) {
        let plain = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let manager = PgManager::from_url(&plain)?;
        assert_eq!(manager.ssl_mode(), SslMode::Require);
        let (failure, _) = tls_failure(&manager).await;
        assert_eq!(failure, TlsFailure::NotSupported);
        let manager = PgManager::from_url(&format!("{plain}?sslmode=disable"))?;
        assert_eq!(manager.ssl_mode(), SslMode::Disable);
        connect(&manager).await?;
        // The configuration's key is over both.
        let mut config = PostgresConfig::default();
        config.url = plain.into();
        config.ssl_mode = Some(SslMode::Prefer);
        config.build("libpq-child")?.session().await?;
        return Ok(());
    }
    let pg = blocking(PgInstance::start)?;
    let out = blocking(|| {
        std::process::Command::new(std::env::current_exe()?)
            .args(["--exact", "tls::libpq_variables_apply_beneath_the_url", "--nocapture"])
            .env(CHILD, pg.port().to_string())
            .env("PGSSLMODE", "require")
            .output()
    })?;
    let shown =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("1 passed"), "the child ran no test: {shown}");
    Ok(())
}
