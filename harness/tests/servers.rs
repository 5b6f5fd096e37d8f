//! The launchers' TLS, authentication and socket options, checked with the system's own
//! clients (`psql`, `redis-cli`): each server lets in what it should and refuses the rest,
//! with the error that says why.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pool_harness::{CertFiles, PgHba, PgInstance, RedisInstance, TestPki};

/// What a client printed: its standard output when it succeeded, else its standard error.
type Reply = Result<String, String>;

/// Runs `psql` with a libpq connection string and one statement, with none of libpq's `PG*`
/// variables from this process's environment but `PGPASSWORD` when given.
fn psql(conninfo: &str, password: Option<&str>, sql: &str) -> Reply {
    let mut cmd = Command::new("psql");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            cmd.env_remove(name);
        }
    }
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    // psql, without a password, asks for one on a terminal: there is none to ask.
    cmd.args(["-X", "-At", "-w", "-d", conninfo, "-c", sql]).stdin(Stdio::null());
    reply(&mut cmd)
}

/// Runs `redis-cli` with these arguments.
fn redis_cli<S: AsRef<OsStr>>(args: &[S]) -> Reply {
    reply(Command::new("redis-cli").args(args).stdin(Stdio::null()))
}

fn reply(cmd: &mut Command) -> Reply {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    // redis-cli exits 0 after an error reply, which it prints on its standard output.
    if out.status.success() && !stdout.starts_with("(error)") && !stdout.starts_with("ERR") {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{stderr}"))
    }
}

/// Asserts that `reply` failed with an error holding `expected`.
#[track_caller]
fn assert_refused(reply: Reply, expected: &str) {
    match reply {
        Ok(out) => panic!("expected an error with {expected:?}, got success: {out:?}"),
        Err(err) => {
            assert!(err.contains(expected), "expected an error with {expected:?}, got {err:?}")
        }
    }
}

/// Waits until a server's `log` holds `line`, which a server writes a moment after the TLS
/// alert that told the client; fails after 10 seconds.
#[track_caller]
fn logged(log: impl Fn() -> String, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log().contains(line) {
        assert!(Instant::now() < deadline, "the server never logged {line:?}: {}", log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A libpq connection string to 127.0.0.1's `host` (a name or address) on `pg`'s port.
fn tcp(pg: &PgInstance, host: &str, user: &str, tls: &str) -> String {
    format!("host={host} port={} user={user} dbname=postgres {tls}", pg.port())
}

/// libpq's TLS parameters: this mode, root certificate and, when given, client certificate.
fn ssl(mode: &str, root: &Path, client: Option<&CertFiles>) -> String {
    let mut params = format!("sslmode={mode} sslrootcert={}", root.display());
    if let Some(client) = client {
        params.push_str(&format!(
            " sslcert={} sslkey={}",
            client.cert.display(),
            client.key.display()
        ));
    }
    params
}

/// Whether the session runs over TLS, as the server sees it.
const SSL_IN_USE: &str = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

#[test]
fn a_test_pki_keeps_its_keys_private_and_gives_the_server_keys_to_postgres() -> anyhow::Result<()> {
    let pki = TestPki::generate()?;
    let app = pki.issue_client("app")?;
    let other = pki.issue_server(&["db.invalid"])?;
    let dir = pki.dir().to_owned();
    for key in [pki.server_key(), pki.client_key(), &pki.expired_server().key, &app.key, &other.key]
    {
        let mode = std::fs::metadata(key)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    for cert in [pki.ca_pem(), pki.other_ca_pem(), pki.server_cert(), pki.client_cert(), &app.cert]
    {
        assert!(std::fs::read_to_string(cert)?.starts_with("-----BEGIN CERTIFICATE-----\n"));
    }
    let me = std::fs::metadata("/proc/self")?.uid();
    assert_eq!(std::fs::metadata(pki.client_key())?.uid(), me, "a client key stays its user's");
    if me == 0 {
        let postgres = std::fs::metadata(pki.server_key())?.uid();
        assert_ne!(postgres, 0, "as root, a server key belongs to the postgres user");
        assert_eq!(std::fs::metadata(&other.key)?.uid(), postgres);
    }
    let debug = format!("{pki:?}");
    assert!(debug.contains("TestPki") && !debug.contains("PRIVATE KEY"), "{debug}");
    drop(pki);
    assert!(!dir.exists(), "{} is removed on drop", dir.display());
    Ok(())
}

#[test]
fn a_test_pki_left_by_an_exited_process_is_removed_and_a_live_one_kept() -> anyhow::Result<()> {
    let mut child = Command::new("true").spawn()?;
    let exited = child.id();
    child.wait()?;
    let abandoned = TestPki::generate()?;
    let dir = abandoned.dir().to_owned();
    // `<pid> <start time> <pid namespace> <boot id>`: as if an exited process owned it.
    let owner = std::fs::read_to_string(dir.join("owner"))?;
    let rest = owner.splitn(3, ' ').nth(2).expect("an owner of four fields").to_owned();
    std::fs::write(dir.join("owner"), format!("{exited} 1 {rest}"))?;
    // As if that process had been killed: no drop runs.
    std::mem::forget(abandoned);
    let live = TestPki::generate()?;

    let reaped = pool_harness::reap_abandoned();
    assert!(reaped.contains(&dir) && !dir.exists(), "{} left behind", dir.display());
    assert!(live.ca_pem().exists(), "a live owner's PKI is kept");
    Ok(())
}

#[test]
fn postgres_with_tls_is_verified_against_its_ca_and_host_name() -> anyhow::Result<()> {
    let pki = TestPki::generate()?;
    let pg = PgInstance::builder().ssl(pki.server()).start()?;
    let verify_full = ssl("verify-full", pki.ca_pem(), None);

    assert_eq!(
        psql(&tcp(&pg, "localhost", "postgres", &verify_full), None, SSL_IN_USE),
        Ok("t".into())
    );
    assert_eq!(
        psql(&tcp(&pg, "127.0.0.1", "postgres", &verify_full), None, SSL_IN_USE),
        Ok("t".into())
    );
    let unknown_ca = ssl("verify-full", pki.other_ca_pem(), None);
    assert_refused(
        psql(&tcp(&pg, "localhost", "postgres", &unknown_ca), None, SSL_IN_USE),
        "certificate verify failed",
    );
    // `trust` lets a client in without TLS too.
    assert_eq!(
        psql(&tcp(&pg, "127.0.0.1", "postgres", "sslmode=disable"), None, SSL_IN_USE),
        Ok("f".into())
    );

    pg.restart()?;
    assert_eq!(
        psql(&tcp(&pg, "localhost", "postgres", &verify_full), None, SSL_IN_USE),
        Ok("t".into())
    );
    Ok(())
}

#[test]
fn postgres_refuses_a_certificate_for_another_host_or_out_of_date() -> anyhow::Result<()> {
    let pki = TestPki::generate()?;
    let elsewhere = PgInstance::builder().ssl(&pki.issue_server(&["db.invalid"])?).start()?;
    let expired = PgInstance::builder().ssl(pki.expired_server()).start()?;

    let verify_full = ssl("verify-full", pki.ca_pem(), None);
    assert_refused(
        psql(&tcp(&elsewhere, "localhost", "postgres", &verify_full), None, SSL_IN_USE),
        "server certificate for \"db.invalid\" does not match host name \"localhost\"",
    );
    // The certificate itself is sound: only its name is wrong.
    let verify_ca = ssl("verify-ca", pki.ca_pem(), None);
    assert_eq!(
        psql(&tcp(&elsewhere, "localhost", "postgres", &verify_ca), None, SSL_IN_USE),
        Ok("t".into())
    );

    // libpq says only that verification failed; OpenSSL's own check says why.
    assert_refused(
        psql(&tcp(&expired, "localhost", "postgres", &verify_ca), None, SSL_IN_USE),
        "certificate verify failed",
    );
    let verify = |cert: &Path| {
        reply(Command::new("openssl").arg("verify").arg("-CAfile").arg(pki.ca_pem()).arg(cert))
    };
    assert_refused(verify(&pki.expired_server().cert), "certificate has expired");
    assert!(verify(pki.server_cert()).is_ok_and(|out| out.ends_with(": OK")));
    assert_eq!(
        psql(&tcp(&expired, "localhost", "postgres", "sslmode=require"), None, SSL_IN_USE),
        Ok("t".into()),
        "`require` does not check the certificate"
    );
    Ok(())
}

#[test]
fn postgres_with_client_cert_hba_lets_in_only_certified_clients() -> anyhow::Result<()> {
    let pki = TestPki::generate()?;
    let pg = PgInstance::builder()
        .ssl(pki.server())
        .ssl_ca(pki.ca_pem())
        .hba(PgHba::ClientCert)
        .role("app")
        .start()?;
    let app = pki.issue_client("app")?;
    let with = |client: Option<&CertFiles>| ssl("verify-full", pki.ca_pem(), client);

    assert_eq!(
        psql(
            &tcp(&pg, "localhost", "postgres", &with(Some(pki.client()))),
            None,
            "select current_user"
        ),
        Ok("postgres".into())
    );
    assert_eq!(
        psql(&tcp(&pg, "localhost", "app", &with(Some(&app))), None, "select current_user"),
        Ok("app".into())
    );
    assert_refused(
        psql(&tcp(&pg, "localhost", "postgres", &with(None)), None, SSL_IN_USE),
        "connection requires a valid client certificate",
    );
    assert_refused(
        psql(&tcp(&pg, "localhost", "postgres", "sslmode=disable"), None, SSL_IN_USE),
        "no encryption",
    );
    assert_refused(
        psql(&tcp(&pg, "localhost", "app", &with(Some(pki.client()))), None, SSL_IN_USE),
        "certificate authentication failed for user \"app\"",
    );
    let untrusted = pki.issue_untrusted_client("postgres")?;
    // The client reads the server's alert, or the reset that may overtake it.
    let refused =
        psql(&tcp(&pg, "localhost", "postgres", &with(Some(&untrusted))), None, SSL_IN_USE);
    assert!(refused.is_err(), "a certificate of another CA: {refused:?}");
    logged(|| pg.log(), "could not accept SSL connection: certificate verify failed");
    // The harness itself still gets in, over the Unix socket.
    assert_eq!(pg.psql("select count(*) from pg_roles where rolname = 'app'")?, "1");
    Ok(())
}

#[test]
fn postgres_with_scram_takes_the_right_password_only() -> anyhow::Result<()> {
    let password = "s3cret 'quoted' \\ pass";
    let builder = PgInstance::builder().hba(PgHba::ScramSha256).role_with_password("app", password);
    assert!(!format!("{builder:?}").contains("s3cret"), "{builder:?}");
    let pg = builder.start()?;
    let app = tcp(&pg, "127.0.0.1", "app", "sslmode=disable");

    assert_eq!(psql(&app, Some(password), "select current_user"), Ok("app".into()));
    assert_refused(
        psql(&app, Some("wrong"), "select 1"),
        "password authentication failed for user \"app\"",
    );
    assert_refused(
        psql(&tcp(&pg, "127.0.0.1", "postgres", "sslmode=disable"), None, "select 1"),
        "no password supplied",
    );
    assert_eq!(
        pg.psql("select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = 'app'")?,
        "t"
    );

    pg.set_password("app", "n3w")?;
    assert_refused(
        psql(&app, Some(password), "select 1"),
        "password authentication failed for user \"app\"",
    );
    assert_eq!(psql(&app, Some("n3w"), "select current_user"), Ok("app".into()));

    let err = pg.set_password("nobody", "hunter2").expect_err("no such role");
    let err = format!("{err:#}");
    assert!(err.contains("role \"nobody\" does not exist") && !err.contains("hunter2"), "{err}");
    Ok(())
}

#[test]
fn postgres_answers_over_its_unix_socket() -> anyhow::Result<()> {
    let pg = PgInstance::start()?;
    let socket = pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port()));
    assert!(socket.exists(), "{}", socket.display());
    let over_socket = "select coalesce(inet_server_addr()::text, 'unix socket')";
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        pg.socket_dir().display(),
        pg.port()
    );
    assert_eq!(psql(&conninfo, None, over_socket), Ok("unix socket".into()));
    assert_eq!(psql(&pg.socket_url(), None, over_socket), Ok("unix socket".into()));
    assert_eq!(psql(&pg.url(), None, over_socket), Ok("127.0.0.1/32".into()), "the URL is TCP's");
    Ok(())
}

#[test]
fn a_replica_of_a_tls_primary_serves_tls_with_the_same_certificate() -> anyhow::Result<()> {
    let pki = TestPki::generate()?;
    let primary = PgInstance::builder().ssl(pki.server()).start()?;
    let replica = primary.start_replica()?;
    let verify_full = ssl("verify-full", pki.ca_pem(), None);
    assert_eq!(
        psql(&tcp(&replica, "localhost", "postgres", &verify_full), None, SSL_IN_USE),
        Ok("t".into())
    );
    assert_eq!(replica.psql("select pg_is_in_recovery()")?, "t");
    // Its own copy, in its data directory, which the base backup brought.
    assert_eq!(replica.psql("show ssl_cert_file")?, "harness-server.pem");
    Ok(())
}

#[test]
fn redis_with_tls_answers_only_over_tls() -> anyhow::Result<()> {
    let pki = TestPki::generate()?;
    let mut redis = RedisInstance::builder().tls(pki.server(), pki.ca_pem()).start()?;
    assert!(redis.ping());
    assert_eq!(redis.tls_port(), Some(redis.port()));
    assert_eq!(redis.url(), format!("rediss://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.tls_url(), Some(redis.url()));
    let port = redis.port().to_string();
    let tls = |ca: &Path| {
        redis_cli(&[
            OsStr::new("--tls"),
            OsStr::new("--cacert"),
            ca.as_os_str(),
            OsStr::new("-p"),
            OsStr::new(&port),
            OsStr::new("PING"),
        ])
    };

    assert_eq!(tls(pki.ca_pem()), Ok("PONG".into()));
    assert_refused(tls(pki.other_ca_pem()), "certificate verify failed");
    assert!(redis_cli(&["-p", &port, "PING"]).is_err(), "no plaintext on the TLS port");
    logged(|| redis.log(), "SSL routines::wrong version number");

    redis.restart()?;
    assert!(redis.ping());
    assert_eq!(tls(pki.ca_pem()), Ok("PONG".into()));
    Ok(())
}

#[test]
fn redis_with_tls_auth_clients_requires_a_client_certificate() -> anyhow::Result<()> {
    let pki = TestPki::generate()?;
    let redis = RedisInstance::builder()
        .tls(pki.server(), pki.ca_pem())
        .tls_auth_clients(pki.client())
        .start()?;
    assert!(redis.ping(), "the harness presents its client certificate");
    let port = redis.port().to_string();
    let tls = |client: Option<&CertFiles>| {
        let mut args = vec![OsStr::new("--tls"), OsStr::new("--cacert"), pki.ca_pem().as_os_str()];
        if let Some(client) = client {
            args.extend([
                OsStr::new("--cert"),
                client.cert.as_os_str(),
                OsStr::new("--key"),
                client.key.as_os_str(),
            ]);
        }
        args.extend([OsStr::new("-p"), OsStr::new(&port), OsStr::new("PING")]);
        redis_cli(&args)
    };
    assert!(tls(None).is_err(), "a client without a certificate");
    logged(|| redis.log(), "peer did not return a certificate");
    assert_eq!(tls(Some(&pki.issue_client("app")?)), Ok("PONG".into()));
    assert!(tls(Some(&pki.issue_untrusted_client("app")?)).is_err(), "a certificate of another CA");
    logged(|| redis.log(), "SSL routines::certificate verify failed");
    Ok(())
}

#[test]
fn redis_with_tls_and_a_plaintext_port_serves_both() -> anyhow::Result<()> {
    let pki = TestPki::generate()?;
    let redis =
        RedisInstance::builder().tls(pki.server(), pki.ca_pem()).plaintext_port().start()?;
    let tls_port = redis.tls_port().expect("a TLS port");
    assert_ne!(tls_port, redis.port());
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.tls_url(), Some(format!("rediss://127.0.0.1:{tls_port}")));

    assert_eq!(redis_cli(&["-p", &redis.port().to_string(), "PING"]), Ok("PONG".into()));
    let ca = pki.ca_pem().to_string_lossy();
    assert_eq!(
        redis_cli(&["--tls", "--cacert", &ca, "-p", &tls_port.to_string(), "PING"]),
        Ok("PONG".into())
    );
    Ok(())
}

#[test]
fn redis_answers_over_its_unix_socket() -> anyhow::Result<()> {
    let redis = RedisInstance::builder().unix_socket().start()?;
    let socket = redis.socket_path().expect("a socket").to_owned();
    assert_eq!(redis.unix_url(), Some(format!("redis+unix://{}", socket.display())));
    assert_eq!(std::fs::metadata(&socket)?.permissions().mode() & 0o777, 0o700);
    assert_eq!(
        redis_cli(&[OsStr::new("-s"), socket.as_os_str(), OsStr::new("PING")]),
        Ok("PONG".into())
    );
    assert_eq!(RedisInstance::start()?.unix_url(), None);
    Ok(())
}
