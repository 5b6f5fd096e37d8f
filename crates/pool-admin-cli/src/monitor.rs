//! `pool-admin monitor`: polls a running server's stats and prints a usage line per pool and
//! an alert for each high-severity recommendation.
//!
//! # Exit status
//!
//! The monitor keeps polling through failures once it has seen the server answer, so a server
//! restart does not end it; but a first poll that fails (the server cannot be reached, or
//! answers with an error) exits 1 at once: that is a wrong `--url` or a server not running.
//! A wrong token exits 2 at any poll. With `--count`, the run exits 0 when its last poll
//! succeeded and 1 when it failed. Ctrl-C ends it with the shell's usual interrupted status
//! (130), never 0.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use pool_admin::PREFIX;
use pool_admin::wire::{PoolStats, Severity, StatsResponse};

/// Options of `monitor`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: 1 at once when the first poll fails (server unreachable or answering an error); \
later failures are printed and polling goes on. 2 when the token is refused. With --count, 0 \
when the last poll succeeded and 1 when it failed.")]
pub(crate) struct Args {
    /// The server's base URL, with its scheme: http://host:port (plain HTTP, which is what
    /// `pool-admin serve` speaks).
    #[arg(long, default_value = "http://127.0.0.1:9187", value_parser = parse_url)]
    url: String,
    /// The bearer token.
    #[arg(long, env = "POOL_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Seconds between polls: more than 0 and at most 86400 (a day); below 0.1 polls every
    /// 0.1 s.
    #[arg(long, default_value = "5", value_parser = parse_interval)]
    interval: Duration,
    /// Stop after this many polls (forever without).
    #[arg(long)]
    count: Option<u64>,
}

/// An example `--url`, for error messages.
const EXAMPLE_URL: &str = "http://127.0.0.1:9187";

/// How long one poll may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `--url`: an absolute `http://` URL with a host, returned without a trailing `/`.
/// A bare `host:port` is refused here, naming the flag, rather than failing every poll with
/// reqwest's "builder error"; so is `https://`, which the monitor cannot speak (it is built
/// without TLS, and `pool-admin serve` serves none) and would fail every poll with.
fn parse_url(value: &str) -> Result<String, String> {
    let trimmed = value.trim();
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("https://") {
        let rest = &trimmed["https://".len()..];
        return Err(format!(
            "{value:?} uses https, but the monitor speaks plain HTTP only, as `pool-admin serve` \
             does: --url takes e.g. --url http://{rest}"
        ));
    }
    if !lower.starts_with("http://") {
        let example = if trimmed.contains("://") || trimmed.is_empty() {
            EXAMPLE_URL.to_owned()
        } else {
            format!("http://{trimmed}")
        };
        return Err(format!(
            "{value:?} has no http:// scheme: --url takes the server's base URL, e.g. --url {example}"
        ));
    }
    match reqwest::Url::parse(trimmed) {
        Ok(url) if url.host_str().is_some_and(|h| !h.is_empty()) => {
            Ok(trimmed.trim_end_matches('/').to_owned())
        }
        Ok(_) => Err(format!("{value:?} has no host: --url takes e.g. --url {EXAMPLE_URL}")),
        Err(e) => {
            Err(format!("{value:?} is not a valid URL ({e}): --url takes e.g. --url {EXAMPLE_URL}"))
        }
    }
}

/// The longest `--interval`: a monitor that polls less than once a day watches nothing.
const MAX_INTERVAL_SECS: f64 = 86_400.0;

/// The shortest wait between polls, so a tiny `--interval` does not hammer the server.
const MIN_INTERVAL_SECS: f64 = 0.1;

/// Parses `--interval`: a number of seconds above zero and at most a day, raised to 0.1 s.
/// Rejected at parsing, with a message naming the value, so the poll loop never converts a
/// value that `Duration` cannot hold (`inf`, `1e300`) or sleeps forever.
fn parse_interval(value: &str) -> Result<Duration, String> {
    let secs: f64 =
        value.trim().parse().map_err(|_| format!("{value:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("{value:?} must be a number of seconds greater than zero"));
    }
    if secs > MAX_INTERVAL_SECS {
        return Err(format!("{value:?} must be at most {MAX_INTERVAL_SECS} seconds (a day)"));
    }
    Ok(Duration::from_secs_f64(secs.max(MIN_INTERVAL_SECS)))
}

/// One pool's line: its id (`postgresql:main`), then its usage.
fn line(id: &str, p: &PoolStats) -> String {
    format!(
        "{id:<28} in use {:>3}/{:<3} (+{} overflow)  idle {:>3}  waiting {:>3}  avg wait {:>7.2} ms  timeouts {}",
        p.active_connections,
        p.pool_size,
        p.overflow,
        p.idle_connections,
        p.waiting,
        p.average_wait_time * 1e3,
        p.timeouts,
    )
}

/// Renders an error and every cause below it, `: `-separated, skipping a cause whose text the
/// line holds already: reqwest's own message ("error sending request") says nothing of why.
fn chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// What to print when a request to `url` (the stats URL under `base`) failed: the whole cause
/// chain, and how to check that the server is running there.
fn request_failed(base: &str, url: &str, error: reqwest::Error) -> String {
    let what = if error.is_timeout() {
        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
    } else {
        "cannot reach the admin server".to_owned()
    };
    format!(
        "monitor: {url}: {what}: {}\n\
         monitor: check that `pool-admin serve` is running and listening at {base} (its \
         start-up lines print the address), or pass its address with --url",
        chain(&error.without_url())
    )
}

/// The outcome of one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Poll {
    /// The stats were printed.
    Ok,
    /// The poll failed; the reason was printed.
    Failed,
    /// The token was refused; the reason was printed.
    Unauthorized,
}

/// Polls once, printing the stats or why there are none.
async fn poll(client: &reqwest::Client, args: &Args, url: &str) -> Poll {
    let resp = match client.get(url).bearer_auth(&args.token).timeout(REQUEST_TIMEOUT).send().await
    {
        Ok(resp) => resp,
        Err(e) => {
            eprintln!("{}", request_failed(&args.url, url, e));
            return Poll::Failed;
        }
    };
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        eprintln!("monitor: {url}: {status}: {body}");
        return if status == reqwest::StatusCode::UNAUTHORIZED {
            Poll::Unauthorized
        } else {
            Poll::Failed
        };
    }
    let stats = match resp.json::<StatsResponse>().await {
        Ok(stats) => stats,
        Err(e) => {
            eprintln!("monitor: {url}: unreadable stats: {}", chain(&e.without_url()));
            return Poll::Failed;
        }
    };
    print!("{}", report(&stats));
    Poll::Ok
}

/// What one poll prints: a line per pool, PostgreSQL's then Redis's, each in its ids' order,
/// and an `ALERT` line per high-severity recommendation.
fn report(stats: &StatsResponse) -> String {
    let pools =
        stats.database_pools.iter().chain(stats.redis_pools.iter().map(|(id, r)| (id, &r.pool)));
    let mut out: String = pools.map(|(id, p)| line(id, p) + "\n").collect();
    for r in stats.recommendations.iter().filter(|r| r.severity == Severity::High) {
        out.push_str(&format!("ALERT [high] {}: {}: {}\n", r.pool, r.issue, r.suggestion));
    }
    out
}

pub(crate) async fn run(args: Args) -> ExitCode {
    ExitCode::from(monitor(&args).await)
}

/// The poll loop; returns the exit status described in the module docs.
async fn monitor(args: &Args) -> u8 {
    let client = reqwest::Client::new();
    let url = format!("{}{PREFIX}/stats", args.url);
    let mut polls = 0;
    loop {
        let outcome = poll(&client, args, &url).await;
        polls += 1;
        match outcome {
            Poll::Unauthorized => return 2,
            Poll::Failed if polls == 1 => {
                eprintln!("monitor: the first poll failed; giving up");
                return 1;
            }
            Poll::Ok | Poll::Failed => {}
        }
        if args.count.is_some_and(|c| polls >= c) {
            return if outcome == Poll::Ok { 0 } else { 1 };
        }
        println!();
        tokio::time::sleep(args.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values `Duration` cannot hold, zero and negatives are refused with the value named;
    /// sensible ones parse, tiny ones raised to 0.1 s.
    #[test]
    fn interval_parses_only_sensible_numbers_of_seconds() {
        for (value, expected) in [
            ("5", Ok(Duration::from_secs(5))),
            ("0.25", Ok(Duration::from_millis(250))),
            ("0.001", Ok(Duration::from_millis(100))),
            ("86400", Ok(Duration::from_secs(86_400))),
            ("inf", Err("\"inf\" must be a number of seconds greater than zero")),
            ("NaN", Err("\"NaN\" must be a number of seconds greater than zero")),
            ("0", Err("\"0\" must be a number of seconds greater than zero")),
            ("-1", Err("\"-1\" must be a number of seconds greater than zero")),
            ("1e300", Err("\"1e300\" must be at most 86400 seconds (a day)")),
            ("86401", Err("\"86401\" must be at most 86400 seconds (a day)")),
            ("soon", Err("\"soon\" is not a number of seconds")),
        ] {
            assert_eq!(parse_interval(value), expected.map_err(str::to_owned), "{value}");
        }
    }

    /// clap runs the parser: `--interval inf` is an argument error, not a panic later.
    #[test]
    fn clap_rejects_a_bad_interval() {
        use clap::Parser;

        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let err =
            Cli::try_parse_from(["monitor", "--token", "t", "--interval", "inf"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("must be a number of seconds greater than zero"), "{err}");
        let ok = Cli::try_parse_from(["monitor", "--token", "t"]).unwrap();
        assert_eq!(ok.args.interval, Duration::from_secs(5));
    }

    /// A URL without the http:// scheme (https:// included: the monitor has no TLS), or
    /// without a host, is refused naming the flag and an example; a good one loses its
    /// trailing slash.
    #[test]
    fn url_needs_a_scheme_and_a_host() {
        for (value, expected) in [
            ("http://127.0.0.1:9231", Ok("http://127.0.0.1:9231")),
            ("http://admin.example:9187/", Ok("http://admin.example:9187")),
            (" HTTP://host:1 ", Ok("HTTP://host:1")),
            (
                "HTTPS://Host:9187",
                Err(
                    "\"HTTPS://Host:9187\" uses https, but the monitor speaks plain HTTP only, as `pool-admin serve` does: --url takes e.g. --url http://Host:9187",
                ),
            ),
            (
                "127.0.0.1:9231",
                Err(
                    "\"127.0.0.1:9231\" has no http:// scheme: --url takes the server's base URL, e.g. --url http://127.0.0.1:9231",
                ),
            ),
            (
                "localhost:9187",
                Err(
                    "\"localhost:9187\" has no http:// scheme: --url takes the server's base URL, e.g. --url http://localhost:9187",
                ),
            ),
            (
                "ftp://host:9187",
                Err(
                    "\"ftp://host:9187\" has no http:// scheme: --url takes the server's base URL, e.g. --url http://127.0.0.1:9187",
                ),
            ),
            (
                "http://",
                Err(
                    "\"http://\" is not a valid URL (empty host): --url takes e.g. --url http://127.0.0.1:9187",
                ),
            ),
        ] {
            assert_eq!(
                parse_url(value),
                expected.map(str::to_owned).map_err(str::to_owned),
                "{value}"
            );
        }
    }

    /// clap runs the URL parser: a bare host:port is an argument error naming --url.
    #[test]
    fn clap_rejects_a_url_without_a_scheme() {
        use clap::Parser;

        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let err = Cli::try_parse_from(["monitor", "--token", "t", "--url", "127.0.0.1:9231"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("e.g. --url http://127.0.0.1:9231"), "{err}");
        let ok = Cli::try_parse_from(["monitor", "--token", "t"]).unwrap();
        assert_eq!(ok.args.url, "http://127.0.0.1:9187");
    }

    /// A poll prints a line per pool under its id, PostgreSQL's first, and an alert for each
    /// high-severity recommendation only.
    #[test]
    fn a_report_names_each_pool_by_its_id_and_alerts_on_high_severity() {
        use serde_json::json;

        let pool = |active: u64, size: u64| {
            let mut p = serde_json::to_value(PoolStats::default()).unwrap();
            p["backend"] = json!("postgresql");
            p["active_connections"] = json!(active);
            p["pool_size"] = json!(size);
            p["average_wait_time"] = json!(0.0015);
            p
        };
        let mut redis = pool(1, 4);
        redis["backend"] = json!("redis");
        for (k, v) in [
            ("in_use_connections", 1),
            ("available_connections", 3),
            ("created_connections", 4),
            ("max_connections", 8),
            ("shared_clients", 1),
            ("shared_connected", 1),
        ] {
            redis[k] = json!(v);
        }
        let recommendation = |severity: &str, issue: &str| {
            json!({
                "pool": "postgresql:main", "severity": severity, "issue": issue,
                "suggestion": "Increase pool_size to 15",
                "current": { "pool_size": 10, "max_overflow": 0 }, "proposed": null,
                "evidence": serde_json::to_value(pool_admin::wire::Evidence::default()).unwrap(),
            })
        };
        let stats: StatsResponse = serde_json::from_value(json!({
            "database_pools": { "postgresql:main": pool(2, 10) },
            "redis_pools": { "redis:cache": redis },
            "replication": {},
            "recommendations": [recommendation("high", "High wait times"), recommendation("low", "Idle")],
        }))
        .unwrap();
        let lines: Vec<String> = report(&stats).lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].starts_with("postgresql:main              in use   2/10 "), "{lines:#?}");
        assert!(lines[0].contains("avg wait    1.50 ms"), "{lines:#?}");
        assert!(lines[1].starts_with("redis:cache                  in use   1/4 "), "{lines:#?}");
        assert_eq!(
            lines[2],
            "ALERT [high] postgresql:main: High wait times: Increase pool_size to 15"
        );
    }

    /// A local address nothing listens on.
    fn closed_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}")
    }

    fn args(url: String, count: u64) -> Args {
        Args {
            url,
            token: "t".to_owned(),
            interval: Duration::from_millis(100),
            count: Some(count),
        }
    }

    /// A failed request prints its cause, not just reqwest's "error sending request", and how
    /// to check the server.
    #[tokio::test]
    async fn a_request_error_names_its_cause_and_how_to_check_the_server() {
        let base = closed_port_url();
        let url = format!("{base}{PREFIX}/stats");
        let err = reqwest::Client::new().get(&url).send().await.unwrap_err();
        let message = request_failed(&base, &url, err);
        assert!(
            message.starts_with(&format!("monitor: {url}: cannot reach the admin server: ")),
            "{message}"
        );
        assert!(message.to_lowercase().contains("connection refused"), "{message}");
        assert!(
            message.contains(&format!("`pool-admin serve` is running and listening at {base} (")),
            "{message}"
        );
    }

    /// A server that cannot be reached ends the monitor with 1 at the first poll, even with
    /// polls left to do.
    #[tokio::test]
    async fn an_unreachable_server_exits_1_at_the_first_poll() {
        let started = std::time::Instant::now();
        assert_eq!(monitor(&args(closed_port_url(), 50)).await, 1);
        assert!(started.elapsed() < Duration::from_secs(3), "it did not wait for more polls");
    }

    /// A server answering `statuses` in turn (200 once they run out) to the stats URL, one
    /// request per connection, and 404 to any other; returns its base URL and the count of
    /// stats requests it has served.
    async fn server(statuses: &[u16]) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let mut queue: std::collections::VecDeque<u16> = statuses.iter().copied().collect();
        let hits = Arc::new(AtomicUsize::new(0));
        let served = hits.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stats = format!("GET {PREFIX}/stats HTTP/1.1\r\n");
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let status = if request.starts_with(stats.as_bytes()) {
                    served.fetch_add(1, Ordering::SeqCst);
                    queue.pop_front().unwrap_or(200)
                } else {
                    404
                };
                let body = serde_json::to_string(&StatsResponse::default()).unwrap();
                let response = format!(
                    "HTTP/1.1 {status} -\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = client.write_all(response.as_bytes()).await;
            }
        });
        (base, hits)
    }

    /// The exit status: 1 at a failed first poll without polling again, 2 for a refused token,
    /// and with --count, polling on through a later failure and the last poll deciding.
    #[tokio::test]
    async fn the_exit_status_follows_the_first_and_the_last_poll() {
        use std::sync::atomic::Ordering;

        for (statuses, count, expected, requests) in [
            (&[200][..], 2, 0, 2),
            (&[503], 3, 1, 1),
            (&[401], 3, 2, 1),
            (&[200, 401], 3, 2, 2),
            (&[200, 503], 2, 1, 2),
            (&[200, 503], 3, 0, 3),
        ] {
            let (base, hits) = server(statuses).await;
            assert_eq!(
                monitor(&args(base, count)).await,
                expected,
                "{statuses:?}, --count {count}"
            );
            assert_eq!(hits.load(Ordering::SeqCst), requests, "{statuses:?}, --count {count}");
        }
    }
}
