//! `pool-admin`: serve the pools of a config with the admin API, watch a running server, or
//! check a config.
//!
//! ```text
//! pool-admin serve [--config pool-admin.toml] [--demo-load]
//! pool-admin monitor --url http://127.0.0.1:9187 [--token T] [--interval 5] [--count N]
//! pool-admin config check [--config pool-admin.toml]
//! ```

mod demo;
mod monitor;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pool_admin::{AdminConfig, PREFIX, Server};

#[derive(Debug, Parser)]
#[command(
    name = "pool-admin",
    version,
    about = "Connection pools with an admin API, metrics and sizing advice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pools of the config and serve the admin API until SIGINT or SIGTERM.
    Serve {
        /// TOML config file (defaults apply without one; environment variables win over both).
        #[arg(long, env = "POOL_ADMIN_CONFIG")]
        config: Option<PathBuf>,
        /// Also run a load generator against the pools, so the numbers move (for demos).
        #[arg(long)]
        demo_load: bool,
    },
    /// Poll a running server and print each pool's usage and the high-severity alerts.
    Monitor(monitor::Args),
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration, secrets redacted, or the first error.
    Check {
        /// TOML config file.
        #[arg(long, env = "POOL_ADMIN_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn load(path: Option<&PathBuf>) -> Result<AdminConfig, ExitCode> {
    AdminConfig::load(path.map(PathBuf::as_path), |var| std::env::var(var).ok()).map_err(|e| {
        eprintln!("pool-admin: {e}");
        ExitCode::from(2)
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    eprintln!("pool-admin: shutting down, closing the pools");
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve { config, demo_load } => {
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let server = match Server::bind(&config).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("pool-admin: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let base = format!("http://{}", server.local_addr());
            println!("pool-admin serving {} pools on {base}", server.state().registry().len());
            println!("  stats:     {base}{PREFIX}/stats");
            println!("  health:    {base}{PREFIX}/health");
            println!("  optimize:  {base}{PREFIX}/optimize");
            println!("  metrics:   {base}/metrics");
            println!("  openapi:   {base}/api/v1/admin/openapi.json");
            if server.token_was_generated() {
                let token = server.token().expose();
                if config.admin.dashboard {
                    // The fragment never reaches the server; the page takes the token from it.
                    println!("  dashboard: {base}{}#token={token}", pool_admin::dashboard::PATH);
                }
                println!("  token:     {token} (generated; set POOL_ADMIN_TOKEN to choose one)");
            } else {
                if config.admin.dashboard {
                    println!(
                        "  dashboard: {base}{} (sign in with the token)",
                        pool_admin::dashboard::PATH
                    );
                }
                println!("  token:     from the configuration (POOL_ADMIN_TOKEN or admin.token)");
            }
            println!("  try: curl -H 'Authorization: Bearer <token>' {base}{PREFIX}/stats");
            let load = demo_load.then(|| demo::spawn(server.pools()));
            // Stop the demo load before the pools close, so it does not trip over them.
            let result = server
                .run(async move {
                    shutdown_signal().await;
                    if let Some(load) = load {
                        load.abort();
                    }
                })
                .await;
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pool-admin: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Monitor(args) => monitor::run(args).await,
        Command::Config { command: ConfigCommand::Check { config } } => match load(config.as_ref())
        {
            Ok(config) => {
                println!("{}", serde_json::to_string_pretty(&config).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}
