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
    assert_eq!((c.postgres["main"].pool_size, c.postgres["main"].max_overflow), (10, 20));
    assert_eq!(c.postgres["main"].pool_timeout, 30.0);
    assert_eq!(c.postgres["main"].pool_recycle, 3600.0);
    assert_eq!(c.redis["cache"].pool_size, 20);
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9187");
}

#[test]
fn environment_wins_over_the_file_which_wins_over_defaults() {
    let f = file(
        r#"
        [admin]
        listen = "127.0.0.1:7000"
        token = "from-file"
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
    assert_eq!((pg.pool_size, pg.max_overflow, pg.pool_timeout), (15, 3, 2.5));
    assert_eq!(pg.url.expose(), "postgres://app:hunter2@db:5432/app");
    assert_eq!(pg.replicas.len(), 2);
    assert_eq!((c.redis["main"].pool_size, c.redis["main"].max_connections), (4, 9));
    assert_eq!(
        c.redis.keys().collect::<Vec<_>>(),
        ["main"],
        "a file's [redis] replaces the default pools"
    );
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(c.admin.token.as_ref().unwrap().expose(), "from-env");
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
            "invalid value for postgres.main.pool_size = string \"ten\" from environment variable DATABASE_POOL_SIZE: expected usize",
        ),
        (
            &[("DATABASE_POOL_SIZE", "0")],
            None,
            "invalid value for postgres.main.pool_size = 0 from environment variable DATABASE_POOL_SIZE: must be at least 1",
        ),
        (
            &[("DATABASE_POOL_OVERFLOW", "-1")],
            None,
            "invalid value for postgres.main.max_overflow = signed int `-1` from environment variable DATABASE_POOL_OVERFLOW: expected usize",
        ),
        (
            &[("DATABASE_POOL_TIMEOUT", "0")],
            None,
            "invalid value for postgres.main.pool_timeout = 0 from environment variable DATABASE_POOL_TIMEOUT: must be a number of seconds greater than zero",
        ),
        (
            &[("DATABASE_POOL_RECYCLE", "soon")],
            None,
            "invalid value for postgres.main.pool_recycle = string \"soon\" from environment variable DATABASE_POOL_RECYCLE: expected f64",
        ),
        (
            &[("DATABASE_URL", "mysql://root:pw@db/app")],
            None,
            "invalid value for postgres.main.url = mysql://root:***@db/app from environment variable DATABASE_URL: must be a postgres:// URL",
        ),
        (
            &[("REDIS_POOL_SIZE", "many")],
            None,
            "invalid value for redis.main.pool_size = string \"many\" from environment variable REDIS_POOL_SIZE: expected usize",
        ),
        (
            &[("REDIS_MAX_CONNECTIONS", "2")],
            None,
            "invalid value for redis.main.max_connections = 2 from environment variable REDIS_MAX_CONNECTIONS: must be at least pool_size",
        ),
        (
            &[("REDIS_URL", "http://cache")],
            None,
            "invalid value for redis_url = http://cache from environment variable REDIS_URL: must be a redis:// URL",
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
            Some("[redis.main]\nshared_command_timeout = -2\n"),
            "invalid value for redis.main.shared_command_timeout = -2 from TOML file",
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
            "invalid value for admin.request_timeout = 5 from TOML file…: must be greater than admin.health_timeout",
        ),
        (
            &[],
            Some("[admin]\nmax_connections = 0\n"),
            "invalid value for admin.max_connections = 0 from TOML file…: must be from 1 to 65536",
        ),
        (
            &[],
            Some("[admin]\nmax_connections = 4611686018427387904\n"),
            "invalid value for admin.max_connections = 4611686018427387904 from TOML file…: must be from 1 to 65536",
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

/// Every duration the pools accept converts without panicking: 100 years is the most, and
/// `secs` caps anything that got past validation instead of panicking.
#[test]
fn durations_up_to_100_years_are_accepted_and_convert() {
    let c = AdminConfig::load(None, env(&[("DATABASE_POOL_RECYCLE", "3153600000")])).unwrap();
    let recycle = secs(c.postgres["main"].pool_recycle).unwrap();
    assert_eq!(recycle, Duration::from_secs(3_153_600_000));
    assert_eq!(secs(1e20), Some(Duration::from_secs(3_153_600_000)));
    assert_eq!(secs(f64::INFINITY), Some(Duration::from_secs(3_153_600_000)));
    assert_eq!((secs(0.0), secs(-1.0), secs(f64::NAN)), (None, None, None));
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
    assert_eq!(c.redis["main"].pool_size, 3);
}

#[test]
fn unknown_keys_and_missing_files_are_errors() {
    let f = file("[postgres.main]\npool_sise = 3\n");
    let err = AdminConfig::load(Some(&f.0), env(&[])).unwrap_err().to_string();
    assert!(err.contains("pool_sise"), "{err}");
    let err =
        AdminConfig::load(Some(std::path::Path::new("/nonexistent/pool-admin.toml")), env(&[]))
            .unwrap_err();
    assert_eq!(err.to_string(), "config file /nonexistent/pool-admin.toml does not exist");
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
