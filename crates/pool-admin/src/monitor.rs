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
    /// Seconds between polls.
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    /// Stop after this many polls (forever without).
    #[arg(long)]
    count: Option<u64>,
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
        tokio::time::sleep(Duration::from_secs_f64(args.interval.max(0.1))).await;
    }
}
