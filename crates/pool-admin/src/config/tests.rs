//! Configuration: defaults, file, environment, precedence and every bad-value message.

use std::collections::HashMap;
use std::io::Write;

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> =
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |k| map.get(k).cloned()
}

fn file(text: &str) -> tempfile_path::TempFile {
    tempfile_path::TempFile::new(text)
}

/// A file under `target/` removed on drop (no tempfile crate needed for this).
mod tempfile_path {
    use std::path::PathBuf;

    pub(super) struct TempFile(pub(super) PathBuf);

    impl TempFile {
        pub(super) fn new(text: &str) -> TempFile {
            let dir =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/admin-config-tests");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{}-{}.toml", std::process::id(), fastrand::u64(..)));
            let mut f = std::fs::File::create(&path).unwrap();
            std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn defaults_are_the_seeds_pools() {
    let c = AdminConfig::load(None, env(&[])).unwrap();
    assert_eq!(c.postgres.keys().collect::<Vec<_>>(), ["main"]);
    assert_eq!(c.redis.keys().collect::<Vec<_>>(), ["cache", "main"]);
    let pg = &c.postgres["main"].pool;
    assert_eq!((pg.pool_size, pg.max_overflow), (10, 20));
    assert_eq!(pg.pool_timeout, Duration::from_secs(30));
    assert_eq!(pg.pool_recycle, Some(Duration::from_secs(3600)));
    assert_eq!(c.redis["cache"].pool.pool_size, 20);
    assert_eq!(c.redis["cache"].max_size(), 50);
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9187");
}

#[test]
fn environment_wins_over_the_file_which_wins_over_defaults() {
    let f = file(
        r#"
        [admin]
        listen = "127.0.0.1:7000"
        token = "from-file"
        max_connections = 64 # the former name of max_clients
        [postgres.main]
        url = "postgres://app:hunter2@db:5432/app"
        pool_size = 12
        max_overflow = 3
        [redis.main]
        pool_size = 4
        max_connections = 8
        "#,
    );
    let c = AdminConfig::load(
        Some(&f.0),
        env(&[
            ("DATABASE_POOL_SIZE", "15"),
            ("DATABASE_POOL_TIMEOUT", "2.5"),
            ("DATABASE_REPLICA_URLS", "postgres://r1/app, postgres://r2/app"),
            ("REDIS_MAX_CONNECTIONS", "9"),
            ("POOL_ADMIN_TOKEN", "from-env"),
        ]),
    )
    .unwrap();
    let pg = &c.postgres["main"];
    let sizes = (pg.pool.pool_size, pg.pool.max_overflow, pg.pool.pool_timeout);
    assert_eq!(sizes, (15, 3, Duration::from_millis(2500)));
    assert_eq!(pg.url.expose(), "postgres://app:hunter2@db:5432/app");
    assert_eq!(pg.replicas.len(), 2);
    assert_eq!((c.redis["main"].pool.pool_size, c.redis["main"].max_size()), (4, 9));
    assert_eq!(
        c.redis.keys().collect::<Vec<_>>(),
        ["main"],
        "a file's [redis] replaces the default pools"
    );
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(c.admin.token.as_ref().unwrap().expose(), "from-env");
    assert_eq!(c.admin.max_clients, 64);
    let shown = serde_json::to_string(&c).unwrap();
    assert!(!shown.contains("hunter2") && !shown.contains("from-env"), "{shown}");
    assert!(shown.contains("postgres://app:***@db:5432/app"), "{shown}");
}

#[test]
fn every_bad_value_names_the_key_the_source_and_the_value() {
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[("DATABASE_POOL_SIZE", "ten")],
            None,
            "invalid value for postgres.main.pool_size = string \"ten\" from environment variable DATABASE_POOL_SIZE: expected a whole number such as 10",
        ),
        (
            &[("DATABASE_POOL_SIZE", "0")],
            None,
            "invalid value for postgres.main.pool_size = 0 from environment variable DATABASE_POOL_SIZE: must be at least 1",
        ),
        (
            &[("DATABASE_POOL_OVERFLOW", "-1")],
            None,
            "invalid value for postgres.main.max_overflow = string \"-1\" from environment variable DATABASE_POOL_OVERFLOW: expected a whole number such as 10",
        ),
        (
            &[("DATABASE_POOL_TIMEOUT", "0")],
            None,
            "invalid value for postgres.main.pool_timeout = 0 from environment variable DATABASE_POOL_TIMEOUT: must be a number of seconds greater than zero",
        ),
        (
            &[("DATABASE_POOL_RECYCLE", "soon")],
            None,
            "invalid value for postgres.main.pool_recycle = string \"soon\" from environment variable DATABASE_POOL_RECYCLE: expected seconds as a number such as 30, 0.5 or 1e3; 0 or less means never",
        ),
        (
            &[("DATABASE_URL", "mysql://root:pw@db/app")],
            None,
            "invalid value for postgres.main.url = mysql://root:***@db/app from environment variable DATABASE_URL: must be a postgres:// URL",
        ),
        (
            &[("REDIS_POOL_SIZE", "many")],
            None,
            "invalid value for redis.main.pool_size = string \"many\" from environment variable REDIS_POOL_SIZE: expected a whole number such as 10",
        ),
        (
            &[("REDIS_MAX_CONNECTIONS", "2")],
            None,
            "invalid value for redis.main.max_connections = 2 from environment variable REDIS_MAX_CONNECTIONS: must be at least pool_size",
        ),
        (
            &[("REDIS_URL", "http://cache")],
            None,
            "invalid value for redis_url = http://cache from environment variable REDIS_URL: must be a redis://, rediss://, redis+unix://, redis-sentinel:// or redis-cluster:// URL",
        ),
        (
            &[("POOL_ADMIN_LISTEN", "everywhere")],
            None,
            "invalid value for admin.listen = string \"everywhere\" from environment variable POOL_ADMIN_LISTEN: invalid socket address syntax",
        ),
        (
            &[],
            Some("[postgres.main]\npool_size = \"big\"\n"),
            "invalid value for postgres.main.pool_size = string \"big\" from TOML file",
        ),
        (
            &[],
            Some("[redis.cache]\npool_size = 0\n"),
            "invalid value for redis.cache.pool_size = 0 from TOML file",
        ),
        (
            &[],
            Some("[postgres.main]\nmax_connecting = 0\n"),
            "invalid value for postgres.main.max_connecting = 0 from TOML file",
        ),
        (
            &[],
            Some("[postgres.main]\nleak_detection_threshold = 4e9\n"),
            "invalid value for postgres.main.leak_detection_threshold = 4000000000 from TOML file",
        ),
        (
            &[],
            Some("[postgres.main]\nreplica_ban = 0\n"),
            "invalid value for postgres.main.replica_ban = 0 from TOML file",
        ),
        (
            &[],
            Some("[redis.main]\nshared_command_timeout = \"soon\"\n"),
            "invalid value for redis.main.shared_command_timeout = string \"soon\" from TOML file",
        ),
        (
            &[],
            Some("[redis.cache]\nretry_on_timeout = true\nshared_command_timeout = 0\n"),
            "invalid value for redis.cache.retry_on_timeout = true",
        ),
        (
            &[],
            Some("[admin]\nhealth_timeout = -1\n"),
            "invalid value for admin.health_timeout = -1 from TOML file",
        ),
        // Finite but beyond what a duration holds (1e20 s), or beyond 100 years.
        (
            &[("DATABASE_POOL_TIMEOUT", "1.0e20")],
            None,
            "invalid value for postgres.main.pool_timeout = 100000000000000000000 from environment variable DATABASE_POOL_TIMEOUT: must be at most 100 years (3153600000 seconds)",
        ),
        (
            &[("DATABASE_POOL_RECYCLE", "3153600001")],
            None,
            "invalid value for postgres.main.pool_recycle = 3153600001 from environment variable DATABASE_POOL_RECYCLE: must be at most 100 years",
        ),
        (
            &[],
            Some("[postgres.main]\nreplica_ban = 1e300\n"),
            "invalid value for postgres.main.replica_ban = 1000000000000000000000000000000",
        ),
        (
            &[],
            Some("[redis.cache]\nshared_command_timeout = 1e10\n"),
            "invalid value for redis.cache.shared_command_timeout = 10000000000 from TOML file",
        ),
        (
            &[],
            Some("[admin]\nsample_interval = 1e19\n"),
            "invalid value for admin.sample_interval = 10000000000000000000 from TOML file",
        ),
        (
            &[],
            Some("[postgres.main]\npool_size = 4\nmin_idle = 5\n"),
            "invalid value for postgres.main.min_idle = 5 from TOML file…: must be at most pool_size (4)",
        ),
        (
            &[],
            Some("[postgres.main]\nreplica_timeout = 0\n"),
            "invalid value for postgres.main.replica_timeout = 0 from TOML file…: must be a number of seconds greater than zero",
        ),
        (
            &[],
            Some("[postgres.main]\npre_ping_bypass = -1\n"),
            "invalid value for postgres.main.pre_ping_bypass = -1 from TOML file…: must be 0 (check every time) or a number of seconds",
        ),
        (
            &[],
            Some("[postgres.main]\nlag_probe_interval = inf\n"),
            "invalid value for postgres.main.lag_probe_interval = inf",
        ),
        (
            &[],
            Some("[admin]\nrequest_timeout = 0\n"),
            "invalid value for admin.request_timeout = 0 from TOML file…: must be a number of seconds greater than zero",
        ),
        (
            &[],
            Some("[admin]\nhealth_timeout = 5\nrequest_timeout = 5\n"),
            "invalid value for admin.request_timeout = 5 from TOML file…: must be greater than health_timeout",
        ),
        (
            &[],
            Some("[admin]\nmax_clients = 0\n"),
            "invalid value for admin.max_clients = 0 from TOML file…: must be from 1 to 65536",
        ),
        (
            &[],
            Some("[admin]\nmax_connections = 4611686018427387904\n"),
            "invalid value for admin.max_clients = 4611686018427387904 from TOML file…: must be from 1 to 65536",
        ),
        (
            &[],
            Some("[admin]\nmax_connections = 4\nmax_clients = 5\n"),
            "admin.max_connections is the former name of admin.max_clients: set only one",
        ),
    ];
    for (vars, toml, expected) in cases {
        let f = toml.map(file);
        let err = AdminConfig::load(f.as_ref().map(|f| f.0.as_path()), env(vars))
            .unwrap_err()
            .to_string();
        // `…` stands for the part in between (a temporary file's path).
        assert!(
            expected.split('…').all(|part| err.contains(part)),
            "{vars:?} {toml:?}:\n  got      {err}\n  expected {expected}"
        );
    }
}

/// Every duration the pools accept converts without panicking: 100 years is the most.
#[test]
fn durations_up_to_100_years_are_accepted_and_convert() {
    let c = AdminConfig::load(None, env(&[("DATABASE_POOL_RECYCLE", "3153600000")])).unwrap();
    let recycle = c.postgres["main"].pool.pool_recycle.unwrap();
    assert_eq!(recycle, Duration::from_secs(3_153_600_000));
    let c = AdminConfig::load(None, env(&[])).unwrap();
    let long = ServerConfig { request_timeout: Duration::from_secs(3_153_600_000), ..c.admin };
    assert_eq!(long.check().map_err(|e| e.to_string()), Ok(()));
    let longer = ServerConfig { request_timeout: Duration::from_secs(3_153_600_001), ..long };
    assert!(longer.check().is_err(), "past 100 years is refused");
}

/// The unprefixed variables configure the pool `main`, documented in `docs/operations.md`:
/// with a file that names only other pools, they add `main` beside them.
#[test]
fn unprefixed_variables_add_main_beside_the_files_pools() {
    let f = file("[postgres.reports]\npool_size = 2\n[redis.cache]\npool_size = 2\n");
    let c = AdminConfig::load(Some(&f.0), env(&[])).unwrap();
    assert_eq!(c.postgres.keys().collect::<Vec<_>>(), ["reports"]);
    assert_eq!(c.redis.keys().collect::<Vec<_>>(), ["cache"]);
    let c = AdminConfig::load(
        Some(&f.0),
        env(&[
            ("DATABASE_URL", "postgres://app@db/main"),
            ("REDIS_POOL_SIZE", "3"),
            ("REDIS_URL", "redis://cache:6379"),
        ]),
    )
    .unwrap();
    assert_eq!(c.postgres.keys().collect::<Vec<_>>(), ["main", "reports"]);
    assert_eq!(c.postgres["main"].url.expose(), "postgres://app@db/main");
    assert_eq!(c.redis.keys().collect::<Vec<_>>(), ["cache", "main"]);
    assert_eq!(c.redis["main"].pool.pool_size, 3);
}

/// An unknown key reads as the key without figment's profile (`default.`), the file named once,
/// the closest known key when one is close, and the known keys, without nested backticks.
#[test]
fn unknown_keys_name_the_file_once_and_suggest_the_closest_key() {
    // A cluster's keys: the engine's and the cluster's own, in one list.
    let pg_keys = "breaker_threshold, connect_statements, connect_timeout, connection_budget, \
                   health_check_interval, idle_timeout, lag_probe_interval, \
                   leak_detection_threshold, max_connecting, max_overflow, max_replica_lag, \
                   min_idle, password_file, pool_pre_ping, pool_recycle, pool_size, \
                   pool_timeout, pool_use_lifo, pre_ping_bypass, primaries, recycle_jitter, replica_ban, \
                   replica_timeout, replicas, reset_on_return, server_settings, ssl_cert, \
                   ssl_key, ssl_mode, ssl_root_cert, statement_timeout, url";
    let cases = [
        (
            "[postgres.main]\npool_sise = 3\n",
            format!(
                "unknown key postgres.main.pool_sise in TOML file {{}}: did you mean pool_size? (known keys: {pg_keys})"
            ),
        ),
        (
            "[postgres.main]\nfrobnicate = 3\n",
            format!("unknown key postgres.main.frobnicate in TOML file {{}} (known keys: {pg_keys})"),
        ),
        (
            "[admn]\nlisten = \"127.0.0.1:1\"\n",
            "unknown key admn in TOML file {}: did you mean admin? (known keys: admin, postgres, redis, redis_url)".to_owned(),
        ),
        (
            "[redis.cache]\nsharedclients = 2\n",
            "unknown key redis.cache.sharedclients in TOML file {}: did you mean shared_clients? (known keys: breaker_threshold, command_timeout, connect_commands, connect_timeout, health_check_interval, idle_timeout, leak_detection_threshold, max_connecting, max_connections, max_overflow, max_reconnect_delay, min_idle, password_file, pool_pre_ping, pool_recycle, pool_size, pool_timeout, pool_use_lifo, pre_ping_bypass, recycle_jitter, retry_on_timeout, shared_clients, shared_command_timeout, socket_keepalive, tcp_user_timeout, tls_ca_cert, tls_cert, tls_key)".to_owned(),
        ),
    ];
    for (toml, expected) in cases {
        let f = file(toml);
        let err = AdminConfig::load(Some(&f.0), env(&[])).unwrap_err();
        let path = f.0.display().to_string();
        assert_eq!(err.to_string(), expected.replace("{}", &path), "{toml:?}");
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
    }
}

#[test]
fn edit_distance_counts_insertions_deletions_substitutions_and_swaps() {
    let cases = [
        ("pool_size", "pool_size", 0),
        ("pool_sise", "pool_size", 1),
        ("pool_siez", "pool_size", 1),
        ("poolsize", "pool_size", 1),
        ("", "url", 3),
        ("kitten", "sitting", 3),
    ];
    for (a, b, d) in cases {
        assert_eq!((edit_distance(a, b), edit_distance(b, a)), (d, d), "{a:?} {b:?}");
    }
    let known = ["url", "replicas", "pool_size", "pool_timeout"];
    assert_eq!(closest("pool_tmeout", &known), Some("pool_timeout"));
    assert_eq!(closest("uri", &known), Some("url"));
    assert_eq!(closest("size", &known), None, "five edits from pool_size is not close");
    assert_eq!(closest("xyz", &known), None);
}

#[test]
fn missing_directory_and_unreadable_files_are_errors_naming_the_path() {
    let err =
        AdminConfig::load(Some(std::path::Path::new("/nonexistent/pool-admin.toml")), env(&[]))
            .unwrap_err();
    assert_eq!(err.to_string(), "config file /nonexistent/pool-admin.toml does not exist");
    // A directory used to be taken for a missing file's defaults, silently.
    let f = file("");
    let dir = f.0.parent().unwrap();
    let err = AdminConfig::load(Some(dir), env(&[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("config file {} is a directory, not a file", dir.display())
    );
    // Bytes that are not UTF-8 cannot be read as TOML text.
    std::fs::write(&f.0, b"pool_size = \xff\n").unwrap();
    let err = AdminConfig::load(Some(&f.0), env(&[])).unwrap_err().to_string();
    let start = format!("config file {} cannot be read: ", f.0.display());
    assert!(err.starts_with(&start), "{err}");
}

#[test]
fn a_file_that_is_not_toml_names_the_file_once_and_the_line() {
    let f = file("[postgres.main\npool_size = 3\n");
    let err = AdminConfig::load(Some(&f.0), env(&[])).unwrap_err().to_string();
    let path = f.0.display().to_string();
    assert!(err.starts_with(&format!("TOML file {path}: TOML parse error at line 1")), "{err}");
    assert_eq!(err.matches(&path).count(), 1, "{err}");
}

/// What `pool-admin serve` refuses before it connects, `load` refuses first, so that
/// `config check` and `serve` agree; every message names the key, its source and the value with
/// its password hidden.
#[test]
fn what_serve_refuses_load_refuses_naming_key_source_and_value() {
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[],
            Some("[postgres.main]\nurl = \"postgres://app:hunter2@db:notaport/app\"\n"),
            "invalid value for postgres.main.url = postgres://app:***@db:notaport/app from TOML file …: not a valid PostgreSQL URL: invalid port number",
        ),
        (
            &[(
                "DATABASE_REPLICA_URLS",
                "postgres://app:hunter2@r1/app,postgres://app:hunter2@r2:99999/app",
            )],
            None,
            "invalid value for postgres.main.replicas[1] = postgres://app:***@r2:99999/app from environment variable DATABASE_REPLICA_URLS: not a valid PostgreSQL URL: invalid port number",
        ),
        (
            &[],
            Some("[postgres.main]\nreplicas = [\"postgres://r:99999/app\"]\n"),
            "invalid value for postgres.main.replicas[0] = postgres://r:99999/app from TOML file …: not a valid PostgreSQL URL: invalid port number",
        ),
        (
            &[],
            Some(
                "[postgres.main]\nssl_mode = \"verify-full\"\nssl_root_cert = \"/nonexistent/ca.pem\"\n",
            ),
            "invalid value for postgres.main.ssl_root_cert = /nonexistent/ca.pem from TOML file …: cannot read it: No such file or directory (os error 2)",
        ),
        (
            &[("DATABASE_SSL_MODE", "require"), ("DATABASE_SSL_KEY", "/nonexistent/client.key")],
            None,
            "invalid value for postgres.main.ssl_key = /nonexistent/client.key from environment variable DATABASE_SSL_KEY: a client key needs its certificate (sslcert) too",
        ),
        (
            &[],
            Some(
                "[postgres.main]\nurl = \"postgres://app:hunter2@db/app?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem\"\n",
            ),
            "invalid value for postgres.main.url = postgres://app:***@db/app?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem from TOML file …: sslrootcert /nonexistent/ca.pem (from the URL): cannot read it: No such file or directory (os error 2)",
        ),
        (
            &[("DATABASE_PASSWORD_FILE", "/nonexistent/db-password")],
            None,
            "invalid value for postgres.main.password_file = /nonexistent/db-password from environment variable DATABASE_PASSWORD_FILE: cannot read the password file /nonexistent/db-password: No such file or directory (os error 2)",
        ),
        (
            &[("DATABASE_URL", "postgres://app:hunter2@db/app?sslmode=bogus")],
            None,
            "invalid value for postgres.main.url = postgres://app:***@db/app?sslmode=bogus from environment variable DATABASE_URL: not a valid PostgreSQL URL: unknown value \"bogus\" for `ssl_mode`",
        ),
        (
            &[("REDIS_URL", "redis://:hunter2@cache:port")],
            None,
            "invalid value for redis_url = redis://:***@cache:port from environment variable REDIS_URL: not a valid Redis URL: invalid port number",
        ),
        (
            &[],
            Some("redis_url = \"redis+unix://\"\n"),
            "invalid value for redis_url = redis+unix:// from TOML file …: not a valid Redis URL: expected redis+unix:///path/to/redis.sock",
        ),
        (
            &[],
            Some(
                "redis_url = \"rediss://cache:6380\"\n[redis.main]\ntls_ca_cert = \"/nonexistent/ca.pem\"\n",
            ),
            "invalid value for redis.main.tls_ca_cert = /nonexistent/ca.pem from TOML file …: cannot read it: No such file or directory (os error 2)",
        ),
        (
            &[("REDIS_TLS_CA_CERT", "/nonexistent/ca.pem")],
            None,
            "invalid value for redis.main.tls_ca_cert = /nonexistent/ca.pem from environment variable REDIS_TLS_CA_CERT: cannot read it",
        ),
        (
            &[],
            Some("[redis.main]\nconnect_commands = [\"AUTH hunter2\"]\n"),
            "invalid value for redis.main.connect_commands[0] = AUTH *** from TOML file …: set the password in the URL, password_file or a credential provider",
        ),
        (
            &[("POOL_ADMIN_LISTEN", "0.0.0.0:9233")],
            None,
            "invalid value for admin.listen = 0.0.0.0:9233 from environment variable POOL_ADMIN_LISTEN: refusing to listen on 0.0.0.0:9233 without an admin token",
        ),
        (
            &[],
            Some("[admin]\nlisten = \"[::]:9233\"\n"),
            "invalid value for admin.listen = [::]:9233 from TOML file …: refusing to listen on [::]:9233 without an admin token",
        ),
        // Settings the pools' engines refuse when `serve` builds them.
        (
            &[],
            Some("[redis.main]\nshared_clients = 0\n"),
            "invalid value for redis.main.shared_clients = 0 from TOML file …: must be at least 1",
        ),
        (
            &[],
            Some("[redis.main]\npool_size = 100001\nmax_connections = 100001\n"),
            "invalid value for redis.main.max_connections = 100001 from TOML file …: must be at most 100000",
        ),
        (
            &[("DATABASE_POOL_OVERFLOW", "99991")],
            None,
            "invalid value for postgres.main.max_overflow = 99991 from environment variable DATABASE_POOL_OVERFLOW: must not exceed 99990, as pool_size (10) + max_overflow must not exceed 100000",
        ),
        (
            &[("DATABASE_POOL_TIMEOUT", "0.000000000001")],
            None,
            "invalid value for postgres.main.pool_timeout = 0.000000000001 from environment variable DATABASE_POOL_TIMEOUT: is less than a nanosecond",
        ),
        (
            &[],
            Some("[redis.cache]\ncommand_timeout = 1e-10\n"),
            "invalid value for redis.cache.command_timeout = 0.0000000001 from TOML file …: is less than a nanosecond",
        ),
        (
            &[],
            Some("[postgres.\"\"]\npool_size = 2\n"),
            "invalid value for postgres = \"\" from TOML file …: a pool's name must not be empty",
        ),
        (
            &[],
            Some(
                "[postgres.a]\nreplicas = [\"postgres://app:hunter2@r/app\"]\n[postgres.a-replica-1]\npool_size = 2\n",
            ),
            "invalid value for postgres.a.replicas[0] = postgres://app:***@r/app from TOML file …: its pool is named a-replica-1, as is the pool of [postgres.a-replica-1]: rename that pool",
        ),
    ];
    for (vars, toml, expected) in cases {
        let f = toml.map(file);
        let err = AdminConfig::load(f.as_ref().map(|f| f.0.as_path()), env(vars))
            .expect_err(expected)
            .to_string();
        assert!(
            expected.split('…').all(|part| err.contains(part)),
            "{vars:?} {toml:?}:\n  got      {err}\n  expected {expected}"
        );
        assert!(!err.contains("hunter2"), "a password shown: {err}");
        assert!(err.matches("error with configuration").count() <= 1, "{err}");
    }
}

/// The refusal of a non-loopback address without a token reads as the server's own, which
/// embedders calling `Server::bind` with a config built in code still get.
#[test]
fn the_listen_refusal_reads_as_the_servers() {
    let err = AdminConfig::load(None, env(&[("POOL_ADMIN_LISTEN", "10.1.2.3:9187")])).unwrap_err();
    let ConfigError::Invalid { key, source_name, value, reason } = err else {
        panic!("expected ConfigError::Invalid, got {err:?}");
    };
    assert_eq!(
        (key.as_str(), source_name.as_str(), value.as_str()),
        ("admin.listen", "environment variable POOL_ADMIN_LISTEN", "10.1.2.3:9187")
    );
    let addr: SocketAddr = "10.1.2.3:9187".parse().unwrap();
    assert_eq!(reason, crate::ServeError::TokenRequired(addr).to_string());
}

/// The same addresses and URLs pass when nothing is wrong with them.
#[test]
fn good_urls_and_listen_addresses_pass() {
    let c = AdminConfig::load(
        None,
        env(&[
            ("POOL_ADMIN_LISTEN", "0.0.0.0:9233"),
            ("POOL_ADMIN_TOKEN", "s3cret"),
            ("DATABASE_URL", "postgresql://app:pw@db:6432/app?sslmode=require"),
            ("DATABASE_REPLICA_URLS", "postgres://r1/app,postgres://r2:5433/app"),
            ("REDIS_URL", "redis://:pw@cache:6380/2"),
        ]),
    )
    .unwrap();
    assert_eq!(c.admin.listen.to_string(), "0.0.0.0:9233");
    assert_eq!(c.postgres["main"].replicas.len(), 2);
    let c = AdminConfig::load(None, env(&[("POOL_ADMIN_LISTEN", "[::1]:9233")])).unwrap();
    assert!(c.admin.token.is_none(), "loopback needs no token");
    // Without Redis pools the Redis URL is never used, so it is not judged.
    let f = file("redis_url = \"redis://cache:port\"\nredis = {}\n");
    assert!(AdminConfig::load(Some(&f.0), env(&[])).unwrap().redis.is_empty());
}

#[test]
fn secrets_are_redacted_everywhere() {
    assert_eq!(redact("postgres://u:p@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
    assert_eq!(redact("redis://:p@h:6379"), "redis://:***@h:6379");
    assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(redact("plain-token"), "***");
    // What is not a URL (a token, a libpq string) is hidden whole; URLs get pool-core's
    // `redact_url`, whose own tests cover the URL forms.
    assert_eq!(redact("host=db password=hunter2 application_name=svc://api"), "***");
    assert_eq!(redact("postgres://u:pa/ss@h/db?password=x"), "postgres://u:***@h/db?password=***");
    let config =
        AdminConfig::load(None, env(&[("DATABASE_URL", "postgres://app@db/prod?password=s3cret")]))
            .unwrap();
    let shown = serde_json::to_string(&config).unwrap();
    assert!(!shown.contains("s3cret") && shown.contains("?password=***"), "{shown}");
    assert!(!format!("{config:?}").contains("s3cret"));
    let s = Secret("postgres://u:p@h/db".to_owned());
    assert_eq!(format!("{s:?}"), "postgres://u:***@h/db");
    let mut out = Vec::new();
    write!(out, "{s:?}").unwrap();
    assert!(!String::from_utf8(out).unwrap().contains(":p@"));
}

/// A token from a secret file or `$(cat …)` often ends in a newline that no client sends (and
/// the server trims blanks around the token it is sent): surrounding whitespace is trimmed, so
/// the stored token is the one clients send.
#[test]
fn a_token_with_surrounding_whitespace_is_stored_trimmed() {
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Case<'_>] = &[
        (&[], Some("[admin]\ntoken = \"s3cret\\n\"\n")),
        (&[], Some("[admin]\ntoken = \" \\ts3cret\\r\\n\"\n")),
        (&[], Some("[admin]\ntoken = \"\"\"\ns3cret\n\"\"\"\n")),
        (&[("POOL_ADMIN_TOKEN", "s3cret\n")], None),
        (&[("POOL_ADMIN_TOKEN", "  s3cret\r\n")], None),
        (&[("POOL_ADMIN_TOKEN", "s3cret\n")], Some("[admin]\ntoken = \"from-file\"\n")),
    ];
    for (vars, toml) in cases {
        let f = toml.map(file);
        let c = AdminConfig::load(f.as_ref().map(|f| f.0.as_path()), env(vars))
            .unwrap_or_else(|e| panic!("{vars:?} {toml:?}: {e}"));
        let token = c.admin.token.as_ref().map(Secret::expose);
        assert_eq!(token, Some("s3cret"), "{vars:?} {toml:?}");
    }
}

/// A token that is blank, or that no client could send as it is (whitespace inside it,
/// characters an `Authorization` header does not carry), is refused naming `admin.token` and
/// its source, never showing the token.
#[test]
fn a_blank_token_or_one_no_client_could_send_is_refused() {
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[],
            Some("[admin]\ntoken = \"\"\n"),
            "invalid value for admin.token = \"\" from TOML file …: must not be empty",
        ),
        (
            &[],
            Some("[admin]\ntoken = \" \\n\"\n"),
            "invalid value for admin.token = \" \\n\" from TOML file …: must not be empty: it is only whitespace",
        ),
        (
            &[("POOL_ADMIN_TOKEN", "\t\r\n")],
            None,
            "invalid value for admin.token = \"\\t\\r\\n\" from environment variable POOL_ADMIN_TOKEN: must not be empty: it is only whitespace",
        ),
        (
            &[],
            Some("[admin]\ntoken = \"hunter2 and more\\n\"\n"),
            "invalid value for admin.token = *** from TOML file …: has whitespace inside it",
        ),
        (
            &[("POOL_ADMIN_TOKEN", "hunter2\nhunter3")],
            None,
            "invalid value for admin.token = *** from environment variable POOL_ADMIN_TOKEN: has whitespace inside it",
        ),
        (
            &[("POOL_ADMIN_TOKEN", "hunter2\u{e9}")],
            None,
            "invalid value for admin.token = *** from environment variable POOL_ADMIN_TOKEN: must be printable ASCII",
        ),
        (
            &[],
            Some("[admin]\ntoken = \"hunter2\\u0000\"\n"),
            "invalid value for admin.token = *** from TOML file …: must be printable ASCII",
        ),
    ];
    for (vars, toml, expected) in cases {
        let f = toml.map(file);
        let err = match AdminConfig::load(f.as_ref().map(|f| f.0.as_path()), env(vars)) {
            Ok(c) => panic!("{vars:?} {toml:?}: accepted, token {:?}", c.admin.token),
            Err(e) => e.to_string(),
        };
        assert!(
            expected.split('…').all(|part| err.contains(part)),
            "{vars:?} {toml:?}:\n  got      {err}\n  expected {expected}"
        );
        assert!(!err.contains("hunter"), "the token shown: {err}");
    }
}

/// End to end: the router of a server configured with `"s3cret\n"` lets a client sending
/// `Bearer s3cret` in, and still refuses another token.
#[tokio::test]
async fn a_token_configured_with_a_trailing_newline_lets_the_unpadded_one_in() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    let f = file("[admin]\ntoken = \"s3cret\\n\"\n");
    for (vars, toml) in [(env(&[("POOL_ADMIN_TOKEN", "s3cret\n")]), None), (env(&[]), Some(&f))] {
        let c = AdminConfig::load(toml.map(|f| f.0.as_path()), vars).unwrap();
        let token = c.admin.token.clone().unwrap();
        let app =
            crate::router(crate::AdminState::builder(pool_core::Registry::new(), token).build());
        for (sent, status) in [("s3cret", StatusCode::OK), ("s3cre", StatusCode::UNAUTHORIZED)] {
            let req = Request::get(format!("{}/stats", crate::PREFIX))
                .header("authorization", format!("Bearer {sent}"))
                .body(Body::empty())
                .unwrap();
            let got = app.clone().oneshot(req).await.unwrap().status();
            assert_eq!(got, status, "Bearer {sent} against {:?}", toml.map(|f| &f.0));
        }
    }
}

/// A check between two settings names where each value came from: the one it refuses, and the
/// one it conflicts with when that came from elsewhere (the environment, the file, or the
/// default), never figment's type names.
#[test]
fn a_conflict_names_each_values_source() {
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[("REDIS_POOL_SIZE", "30")],
            Some("[redis.main]\nmax_connections = 20\n"),
            "invalid value for redis.main.max_connections = 20 from TOML file …: must be at least pool_size (30); pool_size is from environment variable REDIS_POOL_SIZE",
        ),
        (
            &[("REDIS_MAX_CONNECTIONS", "2")],
            None,
            "invalid value for redis.main.max_connections = 2 from environment variable REDIS_MAX_CONNECTIONS: must be at least pool_size (10); pool_size is from the default",
        ),
        (
            &[("DATABASE_POOL_SIZE", "4")],
            Some("[postgres.main]\nmin_idle = 5\n"),
            "invalid value for postgres.main.min_idle = 5 from TOML file …: must be at most pool_size (4); pool_size is from environment variable DATABASE_POOL_SIZE",
        ),
        (
            &[("DATABASE_POOL_SIZE", "99990")],
            None,
            "invalid value for postgres.main.pool_size = 99990 from environment variable DATABASE_POOL_SIZE: must not exceed 99980, as pool_size + max_overflow (20) must not exceed 100000; max_overflow is from the default",
        ),
        (
            &[],
            Some("[admin]\nhealth_timeout = 40\n"),
            "invalid value for admin.request_timeout = 30 from the default: must be greater than health_timeout (40), or health checks time out as requests; admin.health_timeout is from TOML file …",
        ),
        (
            &[],
            Some("[redis.main]\nretry_on_timeout = true\nshared_command_timeout = 0\n"),
            "invalid value for redis.main.retry_on_timeout = true from TOML file …: needs a shared_command_timeout: without one no shared command times out",
        ),
    ];
    for (vars, toml, expected) in cases {
        let f = toml.map(file);
        let err = AdminConfig::load(f.as_ref().map(|f| f.0.as_path()), env(vars))
            .expect_err(expected)
            .to_string();
        let expected = match &f {
            Some(f) => expected.replace('…', &f.0.display().to_string()),
            None => (*expected).to_owned(),
        };
        assert_eq!(err, expected, "{vars:?} {toml:?}");
    }
}

/// What a reader makes of one environment variable's text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Read {
    /// A number of seconds, or a count.
    Value(f64),
    /// Never (a lifetime of 0 or less).
    Never,
    /// Refused.
    Refused,
}

/// The forms an environment variable may take, read by pool-postgres's `with_env_from`,
/// pool-redis's `with_env_from` and pool-admin's `load`: one table, so the readers cannot drift
/// apart.
#[test]
fn every_reader_takes_the_same_forms_with_the_same_meaning() {
    use Read::{Never, Refused, Value};
    // `DATABASE_POOL_TIMEOUT` and `DATABASE_POOL_RECYCLE`.
    let seconds: &[(&str, Read, Read)] = &[
        ("30", Value(30.0), Value(30.0)),
        ("2.5", Value(2.5), Value(2.5)),
        (" 30\n", Value(30.0), Value(30.0)),
        ("+30", Value(30.0), Value(30.0)),
        (".5", Value(0.5), Value(0.5)),
        ("5.", Value(5.0), Value(5.0)),
        ("1e3", Value(1000.0), Value(1000.0)),
        ("1E3", Value(1000.0), Value(1000.0)),
        ("1.5e+2", Value(150.0), Value(150.0)),
        ("3153600000", Value(3_153_600_000.0), Value(3_153_600_000.0)),
        ("0", Refused, Never),
        ("-1", Refused, Never),
        ("-1e3", Refused, Never),
        ("3153600001", Refused, Refused),
        ("1e-12", Refused, Refused),
        ("inf", Refused, Refused),
        ("-inf", Refused, Refused),
        ("Infinity", Refused, Refused),
        ("NaN", Refused, Refused),
        ("1e400", Refused, Refused),
        ("30s", Refused, Refused),
        ("", Refused, Refused),
        ("0x10", Refused, Refused),
        ("1_000", Refused, Refused),
    ];
    let postgres = |var: &str, text: &str| -> Read {
        match PostgresConfig::default().with_env_from(env(&[(var, text)])) {
            Err(_) => Refused,
            Ok(c) if var == "DATABASE_POOL_TIMEOUT" => Value(c.pool.pool_timeout.as_secs_f64()),
            Ok(c) => c.pool.pool_recycle.map_or(Never, |d| Value(d.as_secs_f64())),
        }
    };
    let admin = |var: &str, text: &str| -> Read {
        match AdminConfig::load(None, env(&[(var, text)])) {
            Err(_) => Refused,
            Ok(c) => {
                let pg = &c.postgres["main"].pool;
                let v = if var == "DATABASE_POOL_TIMEOUT" {
                    Some(pg.pool_timeout)
                } else {
                    pg.pool_recycle
                };
                v.map_or(Never, |d| Value(d.as_secs_f64()))
            }
        }
    };
    let mut drift = Vec::new();
    for &(text, timeout, recycle) in seconds {
        for (var, expected) in
            [("DATABASE_POOL_TIMEOUT", timeout), ("DATABASE_POOL_RECYCLE", recycle)]
        {
            let got = (postgres(var, text), admin(var, text));
            if got != (expected, expected) {
                drift.push(format!(
                    "{var}={text:?}: postgres {:?}, admin {:?}, expected {expected:?}",
                    got.0, got.1
                ));
            }
        }
    }
    // The counts: `DATABASE_POOL_SIZE`, `DATABASE_POOL_OVERFLOW`, `REDIS_POOL_SIZE` and
    // `REDIS_MAX_CONNECTIONS` (within the defaults' other size, so that no reader's check of one
    // size against the other decides).
    let counts: &[(&str, Read)] = &[
        ("5", Value(5.0)),
        (" 5\n", Value(5.0)),
        ("+5", Value(5.0)),
        ("05", Value(5.0)),
        ("-1", Refused),
        ("-0", Refused),
        ("1.5", Refused),
        ("5.", Refused),
        ("5.0", Refused),
        ("1e1", Refused),
        ("", Refused),
        ("ten", Refused),
        ("0x5", Refused),
        ("18446744073709551616", Refused),
    ];
    let count_readers: [(&str, &str); 4] = [
        ("DATABASE_POOL_SIZE", "pool_size"),
        ("DATABASE_POOL_OVERFLOW", "max_overflow"),
        ("REDIS_POOL_SIZE", "pool_size"),
        ("REDIS_MAX_CONNECTIONS", "max_connections"),
    ];
    for &(text, expected) in counts {
        for (var, field) in count_readers {
            // REDIS_MAX_CONNECTIONS at 5 is below the default pool_size of 10, which every
            // reader refuses; read it with a pool_size of 5.
            let mut vars = vec![(var, text)];
            if var == "REDIS_MAX_CONNECTIONS" {
                vars.push(("REDIS_POOL_SIZE", "5"));
            }
            let library = if var.starts_with("DATABASE") {
                match PostgresConfig::default().with_env_from(env(&vars)) {
                    Ok(c) if field == "pool_size" => Value(c.pool.pool_size as f64),
                    Ok(c) => Value(c.pool.max_overflow as f64),
                    Err(_) => Refused,
                }
            } else {
                let found =
                    |k: &str| vars.iter().find(|(v, _)| *v == k).map(|(_, t)| (*t).to_owned());
                match pool_redis::RedisConfig::default().with_env_from(found) {
                    Ok(c) if field == "pool_size" => Value(c.pools["main"].pool.pool_size as f64),
                    Ok(c) => Value(c.pools["main"].max_size() as f64),
                    Err(_) => Refused,
                }
            };
            let admin = match AdminConfig::load(None, env(&vars)) {
                Err(_) => Refused,
                Ok(c) => Value(match (var, field) {
                    ("DATABASE_POOL_SIZE", _) => c.postgres["main"].pool.pool_size,
                    ("DATABASE_POOL_OVERFLOW", _) => c.postgres["main"].pool.max_overflow,
                    (_, "pool_size") => c.redis["main"].pool.pool_size,
                    _ => c.redis["main"].max_size(),
                } as f64),
            };
            if (library, admin) != (expected, expected) {
                drift.push(format!(
                    "{var}={text:?}: library {library:?}, admin {admin:?}, expected {expected:?}"
                ));
            }
        }
    }
    assert!(drift.is_empty(), "the readers disagree:\n{}", drift.join("\n"));
}

/// A value no reader takes is refused saying which forms are allowed, by each reader.
#[test]
fn a_refused_number_says_which_forms_are_allowed() {
    let seconds = "expected seconds as a number such as 30, 0.5 or 1e3";
    let count = "expected a whole number such as 10";
    for (var, text, forms) in [
        ("DATABASE_POOL_TIMEOUT", "inf", seconds),
        ("DATABASE_POOL_RECYCLE", "NaN", seconds),
        ("DATABASE_POOL_RECYCLE", "an hour", seconds),
        ("DATABASE_POOL_SIZE", "1e3", count),
        ("DATABASE_POOL_OVERFLOW", "-1", count),
    ] {
        let pg =
            PostgresConfig::default().with_env_from(env(&[(var, text)])).unwrap_err().to_string();
        let admin = AdminConfig::load(None, env(&[(var, text)])).unwrap_err().to_string();
        for err in [&pg, &admin] {
            assert!(err.contains(var) && err.contains(forms), "{var}={text:?}: {err}");
        }
    }
    let recycle =
        AdminConfig::load(None, env(&[("DATABASE_POOL_RECYCLE", "soon")])).unwrap_err().to_string();
    assert!(recycle.contains("0 or less means never"), "{recycle}");
    for var in ["REDIS_POOL_SIZE", "REDIS_MAX_CONNECTIONS"] {
        let found = |k: &str| (k == var).then(|| "many".to_owned());
        let redis =
            pool_redis::RedisConfig::default().with_env_from(found).unwrap_err().to_string();
        let admin = AdminConfig::load(None, env(&[(var, "many")])).unwrap_err().to_string();
        for err in [&redis, &admin] {
            assert!(err.contains(var) && err.contains(count), "{err}");
        }
    }
}

/// A variable means the same to the library and to the server: `REDIS_POOL_SIZE` alone keeps
/// the pool's overflow in both (it used to raise pool-redis's total and be refused by the
/// server), and every optional duration reads 0 or less as off, in a file as in the library.
#[test]
fn the_library_and_the_server_read_a_variable_alike() {
    let vars = [("REDIS_POOL_SIZE", "64")];
    let admin = AdminConfig::load(None, env(&vars)).unwrap();
    let library = pool_redis::RedisConfig::default().with_env_from(env(&vars)).unwrap();
    assert_eq!(admin.redis["main"], library.pools["main"]);
    assert_eq!((admin.redis["main"].pool.pool_size, admin.redis["main"].max_size()), (64, 84));
    let f = file("[redis.main]\nshared_command_timeout = -2\n[postgres.main]\nidle_timeout = 0\n");
    let c = AdminConfig::load(Some(&f.0), env(&[])).unwrap();
    assert_eq!(c.redis["main"].shared_command_timeout, None);
    assert_eq!(c.postgres["main"].pool.idle_timeout, None);
    let vars = [("DATABASE_POOL_SIZE", "7"), ("DATABASE_POOL_RECYCLE", "-1")];
    let library = PostgresConfig::default().with_env_from(env(&vars)).unwrap();
    assert_eq!(AdminConfig::load(None, env(&vars)).unwrap().postgres["main"], library);
}

/// Pools behind Redis Sentinel or over a Redis Cluster are configured by their URL alone; one
/// without the master's name is refused, naming what is missing.
#[test]
fn sentinel_and_cluster_urls_are_accepted() {
    for url in [
        "redis-sentinel://10.0.0.1:26379?sentinelServiceName=mymaster&node=10.0.0.2:26379",
        "redis-cluster://10.0.0.1:7000?node=10.0.0.2:7001",
    ] {
        let c = AdminConfig::load(None, env(&[("REDIS_URL", url)])).unwrap();
        assert_eq!(c.redis_url.expose(), url);
    }
    let err = AdminConfig::load(None, env(&[("REDIS_URL", "redis-sentinel://10.0.0.1")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sentinelServiceName=NAME"), "{err}");
}
