//! `pool-admin monitor`: polls a running server's stats and prints a usage line per pool and
//! an alert for each high-severity recommendation (the seed's monitoring script).

use std::process::ExitCode;
use std::time::Duration;

use pool_admin::PREFIX;
use serde_json::Value;

/// Options of `monitor`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:9187")]
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

fn line(name: &str, kind: &str, p: &Value) -> String {
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    format!(
        "{name:<20} {kind:<8} in use {:>3}/{:<3} (+{} overflow)  idle {:>3}  waiting {:>3}  avg wait {:>7.2} ms  timeouts {}",
        n("active_connections"),
        n("pool_size"),
        n("overflow"),
        n("idle_connections"),
        n("waiting"),
        p["average_wait_time"].as_f64().unwrap_or(0.0) * 1e3,
        n("timeouts"),
    )
}

pub(crate) async fn run(args: Args) -> ExitCode {
    let client = reqwest::Client::new();
    let url = format!("{}{PREFIX}/stats", args.url.trim_end_matches('/'));
    let mut polls = 0;
    loop {
        match client
            .get(&url)
            .bearer_auth(&args.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                Ok(stats) => {
                    for (section, kind) in
                        [("database_pools", "postgres"), ("redis_pools", "redis")]
                    {
                        if let Some(pools) = stats[section].as_object() {
                            for (name, p) in pools {
                                println!("{}", line(name, kind, p));
                            }
                        }
                    }
                    for r in stats["recommendations"].as_array().into_iter().flatten() {
                        if r["severity"] == "high" {
                            println!(
                                "ALERT [high] {}: {}: {}",
                                r["pool"].as_str().unwrap_or("?"),
                                r["issue"].as_str().unwrap_or("?"),
                                r["suggestion"].as_str().unwrap_or("?")
                            );
                        }
                    }
                }
                Err(e) => eprintln!("monitor: {url}: unreadable stats: {e}"),
            },
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                eprintln!("monitor: {url}: {status}: {body}");
                if status == reqwest::StatusCode::UNAUTHORIZED {
                    return ExitCode::from(2);
                }
            }
            Err(e) => eprintln!("monitor: {url}: {e}"),
        }
        polls += 1;
        if args.count.is_some_and(|c| polls >= c) {
            return ExitCode::SUCCESS;
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
}
