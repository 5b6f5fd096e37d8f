//! `cargo xtask demo`: the main job for a newcomer. Redis (reused or throwaway), a throwaway
//! PostgreSQL primary with a streaming replica (reached over TLS, `verify-full`), and the admin server with demo pools (`main`
//! with its replica on PostgreSQL, `main` and `cache` on Redis) under a load generator.
//!
//! The server is built before anything starts, and the demo's URLs are printed only once its
//! health route answers 200, so that every URL printed works.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use pool_harness::{PgInstance, TestPki, target_dir};

use crate::services::{Needs, Services};

/// The admin server's health route, which answers 200 once every pool answers.
const HEALTH: &str = "/api/v1/admin/connection-pools/health";

/// How long the started server has to answer its health route with 200: its pools connect to
/// servers that are already up, so this bounds a start that went wrong, not a slow one.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// How often the health route is asked while the server starts.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Runs the demo until Ctrl-C, then stops what it started.
pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let server_bin = build_server()?;
    let services = Services::ensure(Needs { postgres: false, replica: false, redis: true })?;
    let redis_url = services
        .env()
        .find(|(k, _)| *k == "REDIS_URL")
        .map(|(_, v)| v.to_owned())
        .context("redis url")?;
    eprintln!(
        "starting a throwaway PostgreSQL primary and a streaming replica, with TLS, under target/harness/ ..."
    );
    // The demo's pools reach PostgreSQL as a managed database is reached: over TLS, the server's
    // certificate checked against the CA (generated for the demo) and its name.
    let pki = TestPki::generate()?;
    let primary = PgInstance::builder().ssl(pki.server()).start()?;
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
ssl_mode = "verify-full"
ssl_root_cert = "{ca}"
server_settings = {{ application_name = "pool-toolkit-demo" }}
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
            ca = pki.ca_pem().display(),
        ),
    )?;
    // Ctrl-C in a terminal reaches the server too. A SIGTERM or SIGHUP may come to xtask alone
    // (`kill`, a closed terminal, a supervisor): it is passed on below, so that the server shuts
    // down and xtask, which only waits for it, stops the throwaway servers after it.
    static STOP: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| STOP.store(true, SeqCst))
        .context("installing the Ctrl-C and termination handler")?;
    let mut cmd = Command::new(&server_bin);
    cmd.args(["serve", "--demo-load", "--config"])
        .arg(&config)
        .env("POOL_ADMIN_TOKEN", &token)
        .env("POOL_ADMIN_LISTEN", &listen)
        .envs(services.env());
    let mut server = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    eprintln!("waiting for the admin server to answer at http://{listen} ...");
    match wait_until_ready(&mut server, &listen, &token, READY_WITHIN, &STOP) {
        Ok(Ready::Answered) => {}
        Ok(Ready::Stopped) => return Ok(stop(&mut server)),
        Err(e) => {
            let _ = stop(&mut server);
            return Err(
                e.context(format!("the admin server ({}) did not come up", config.display()))
            );
        }
    }
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
    let code = loop {
        match server.try_wait() {
            Ok(Some(status)) => break Ok(crate::exit_code(status)),
            Ok(None) => {}
            Err(e) => break Err(e).with_context(|| format!("waiting for {cmd:?}")),
        }
        if STOP.swap(false, SeqCst) {
            terminate(&server);
        }
        std::thread::sleep(POLL_EVERY);
    };
    drop(replica);
    drop(primary);
    drop(services);
    code
}

/// Builds the `pool-admin` binary (`cargo build -p pool-admin-cli`, showing cargo's progress)
/// and returns its path, as cargo reports it.
fn build_server() -> anyhow::Result<PathBuf> {
    eprintln!("building the admin server (cargo build -p pool-admin-cli) ...");
    let mut cmd = crate::cargo();
    cmd.args(["build", "-p", "pool-admin-cli", "--bin", "pool-admin"])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    let out = cmd
        .spawn()
        .and_then(|child| child.wait_with_output())
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("building the admin server failed ({}); cargo's errors are above", out.status);
    }
    let messages = String::from_utf8_lossy(&out.stdout);
    executable(&messages).context("cargo built pool-admin-cli but named no `pool-admin` binary")
}

/// The path of the `pool-admin` executable in cargo's JSON messages (one per line).
fn executable(messages: &str) -> Option<PathBuf> {
    messages.lines().rev().find_map(|line| {
        let message: serde_json::Value = serde_json::from_str(line).ok()?;
        let target = &message["target"];
        let bin = target["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
        if message["reason"] != "compiler-artifact" || target["name"] != "pool-admin" || !bin {
            return None;
        }
        message["executable"].as_str().map(PathBuf::from)
    })
}

/// How the wait for the server ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
enum Ready {
    /// Its health route answered 200.
    Answered,
    /// Ctrl-C (or SIGTERM, SIGHUP) came first.
    Stopped,
}

/// Asks `listen`'s health route, with `token`, until it answers 200, `server` exits, `stop` is
/// set or `within` has passed.
///
/// # Errors
///
/// When the server exits first (with its status), or does not answer 200 in time: with the
/// route's last answer (the unhealthy pools and why) or why it could not be asked.
fn wait_until_ready(
    server: &mut Child,
    listen: &str,
    token: &str,
    within: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<Ready> {
    let url = format!("http://{listen}{HEALTH}");
    let deadline = Instant::now() + within;
    loop {
        if stop.load(SeqCst) {
            return Ok(Ready::Stopped);
        }
        if let Some(status) = server.try_wait().context("waiting for the admin server")? {
            bail!("the admin server exited ({status}) before {url} answered; its errors are above");
        }
        let last = match health(listen, token) {
            Ok((200, _)) => return Ok(Ready::Answered),
            Ok((401, _)) => bail!(
                "{url} refused the demo's token (401): is another server listening at {listen}? \
                 (POOL_ADMIN_LISTEN chooses the address)"
            ),
            Ok((status, body)) => format!("it answered {status}: {}", unhealthy(&body)),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{url} did not answer 200 within {}s; {last}", within.as_secs());
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// One `GET` of the health route over plain HTTP/1.1: the status and the body.
fn health(listen: &str, token: &str) -> anyhow::Result<(u16, String)> {
    let addr: SocketAddr = listen
        .to_socket_addrs()
        .with_context(|| format!("resolving {listen}"))?
        .next()
        .with_context(|| format!("{listen} resolves to no address"))?;
    let limit = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, limit)
        .with_context(|| format!("cannot connect to {listen}"))?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    write!(
        stream,
        "GET {HEALTH} HTTP/1.1\r\nHost: {listen}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).with_context(|| format!("reading {listen}'s answer"))?;
    parse_response(&String::from_utf8_lossy(&response))
        .with_context(|| format!("{listen} answered something other than HTTP"))
}

/// The status and the body of an HTTP/1.1 response (`Connection: close`, not chunked).
fn parse_response(response: &str) -> Option<(u16, String)> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The unhealthy pools in a health answer, `pool (why)`, comma-separated; the body itself when
/// it is not the health route's JSON.
fn unhealthy(body: &str) -> String {
    let pools = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|health| {
        let pools = health["pools"].as_object()?;
        let sick: Vec<String> = pools
            .iter()
            .filter(|(_, pool)| pool["healthy"] != true)
            .map(|(name, pool)| {
                format!("{name} ({})", pool["error"].as_str().unwrap_or("unhealthy"))
            })
            .collect();
        Some(sick.join(", "))
    });
    match pools {
        Some(sick) if !sick.is_empty() => format!("unhealthy: {sick}"),
        _ => body.trim().chars().take(300).collect(),
    }
}

/// Asks the server to shut down (SIGTERM), which closes its pools. Until `try_wait` or `wait`
/// reaps it, its pid is still its own.
fn terminate(server: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Shuts the server down, unless it has exited already, and waits for it; its exit status as
/// ours.
fn stop(server: &mut Child) -> ExitCode {
    if let Ok(Some(status)) = server.try_wait() {
        return crate::exit_code(status);
    }
    terminate(server);
    server.wait().map_or(ExitCode::FAILURE, crate::exit_code)
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

#[cfg(test)]
mod tests;
