//! `cargo xtask demo`: the main job for a newcomer. Redis (reused or throwaway), a throwaway
//! PostgreSQL primary with a streaming replica, and the admin server with demo pools (`main`
//! with its replica on PostgreSQL, `main` and `cache` on Redis) under a load generator.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use anyhow::Context as _;
use pool_harness::{PgInstance, target_dir};

use crate::services::{Needs, Services};

/// Runs the demo until Ctrl-C, then stops what it started.
pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let services = Services::ensure(Needs { postgres: false, replica: false, redis: true })?;
    let redis_url = services
        .env()
        .find(|(k, _)| *k == "REDIS_URL")
        .map(|(_, v)| v.to_owned())
        .context("redis url")?;
    eprintln!(
        "starting a throwaway PostgreSQL primary and a streaming replica under target/harness/ ..."
    );
    let primary = PgInstance::start()?;
    let replica = primary.start_replica()?;
    let listen = std::env::var("POOL_ADMIN_LISTEN").unwrap_or_else(|_| "127.0.0.1:9187".to_owned());
    let token = match std::env::var("POOL_ADMIN_TOKEN") {
        Ok(token) => token,
        // From the OS, as `pool-admin serve` makes its own: a token built from the process id
        // could be guessed by any local user, who would then reach the demo's admin API.
        Err(_) => {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes)
                .map_err(|e| anyhow::anyhow!("generating the demo's admin token: {e}"))?;
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    let dir = target_dir().join("demo");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("pool-admin.toml");
    std::fs::write(
        &config,
        format!(
            r#"# Written by `cargo xtask demo`.
redis_url = "{redis_url}"

[admin]
listen = "{listen}"
metrics_open = true
sample_interval = 5

[postgres.main]
url = "{primary}"
replicas = ["{replica}"]
pool_size = 8
max_overflow = 8
connection_budget = 100

[redis.main]
pool_size = 4
max_connections = 8

[redis.cache]
pool_size = 8
max_connections = 16
"#,
            primary = primary.url(),
            replica = replica.url(),
        ),
    )?;
    println!("demo config: {}", config.display());
    // The token rides in the URL's fragment, which the browser keeps to itself: the page reads
    // it, keeps it for the tab and drops it from the address bar.
    println!("dashboard:   http://{listen}/dashboard/#token={}", percent_encode(&token));
    println!("admin API:   http://{listen}/api/v1/admin/connection-pools/stats");
    println!("metrics:     http://{listen}/metrics");
    println!("token:       {token}");
    println!(
        "try:         curl -H 'Authorization: Bearer {token}' http://{listen}/api/v1/admin/connection-pools/stats"
    );
    println!(
        "watch:       cargo run -q -p pool-admin-cli -- monitor --url http://{listen} --token {token}"
    );
    println!("stop:        Ctrl-C or SIGTERM (the throwaway servers stop with the demo)");
    // Ctrl-C in a terminal reaches the server too. A SIGTERM or SIGHUP may come to xtask alone
    // (`kill`, a closed terminal, a supervisor): it is passed on below, so that the server shuts
    // down and xtask, which only waits for it, stops the throwaway servers after it.
    static STOP: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| STOP.store(true, SeqCst))
        .context("installing the Ctrl-C and termination handler")?;
    let mut cmd = crate::cargo();
    cmd.args(["run", "-q", "-p", "pool-admin-cli", "--", "serve", "--demo-load", "--config"])
        .arg(&config)
        .env("POOL_ADMIN_TOKEN", &token)
        .env("POOL_ADMIN_LISTEN", &listen)
        .envs(services.env());
    let code = cmd.spawn().and_then(|mut server| {
        loop {
            if let Some(status) = server.try_wait()? {
                break Ok(crate::exit_code(status));
            }
            // `cargo run` has become the server (Unix); until `try_wait` reaps it, its pid is its own.
            if STOP.swap(false, SeqCst) {
                let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let code = code.with_context(|| format!("running {cmd:?}"));
    drop(replica);
    drop(primary);
    drop(services);
    code
}

/// `value` with everything but RFC 3986's unreserved characters percent-encoded, so that a
/// chosen token survives as one URL parameter.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
