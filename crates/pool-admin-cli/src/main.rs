//! `pool-admin` (the `pool-admin-cli` package): serve the pools of a config with the admin API,
//! watch a running server, or check a config. The library it serves, `pool-admin`, is what a
//! service embeds instead.
//!
//! ```text
//! pool-admin serve [--config pool-admin.toml] [--demo-load]
//! pool-admin monitor --url http://127.0.0.1:9187 [--token T] [--interval 5] [--count N]
//! pool-admin config check [--config pool-admin.toml]
//! ```
//!
//! `serve` and `config check` exit 2 for a configuration they refuse (the same ones, with the
//! same message); `serve` exits 1 when anything else stops it from starting or serving.
//! Logs go to stderr, coloured only when stderr is a terminal.

mod demo;
mod monitor;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pool_admin::{AdminConfig, PREFIX, ServeError, Server};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// The exit status for a configuration that cannot be used, from `serve` and `config check`
/// alike.
const EXIT_CONFIG: u8 = 2;

/// The exit status of `serve`, shown by `--help`.
const SERVE_EXIT_STATUS: &str = "Exit status: 0 after a clean shutdown (SIGINT or SIGTERM); 2 when the configuration is invalid (nothing is started); 1 when anything else stops the server.";

/// The exit status of `config check`, shown by `--help`.
const CHECK_EXIT_STATUS: &str = "Exit status: 0 when the configuration is valid; 2 when it is not (the same configurations `serve` refuses).";

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
    #[command(after_help = SERVE_EXIT_STATUS)]
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
    #[command(after_help = CHECK_EXIT_STATUS)]
    Check {
        /// TOML config file.
        #[arg(long, env = "POOL_ADMIN_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// The configuration from `path` and the environment (read through `lookup`), or the exit
/// status for a configuration error, after printing it to `stderr` (the process's, but for
/// tests).
fn load(
    path: Option<&Path>,
    lookup: impl Fn(&str) -> Option<String>,
    stderr: &mut dyn Write,
) -> Result<AdminConfig, ExitCode> {
    AdminConfig::load(path, lookup).map_err(|e| {
        // Nothing better to do when stderr is gone: the exit status still says it.
        let _ = writeln!(stderr, "pool-admin: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// The exit status for a server that could not start or serve: [`EXIT_CONFIG`] for a
/// configuration the server refuses (which [`AdminConfig::load`] refuses first), 1 otherwise.
fn exit_code(e: &ServeError) -> ExitCode {
    match e {
        ServeError::TokenRequired(_) => ExitCode::from(EXIT_CONFIG),
        _ => ExitCode::FAILURE,
    }
}

/// The log subscriber: `filter`'s events to `writer`, with colours only when `ansi`.
fn logs<W>(writer: W, ansi: bool, filter: EnvFilter) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi).finish()
}

/// What `serve` prints once it listens on `base` with `pools` pools: the routes, the dashboard
/// and a `curl` to try. `generated_token` is the token the server made up, shown in full since
/// nobody else knows it; a configured token is never printed.
fn banner(base: &str, pools: usize, dashboard: bool, generated_token: Option<&str>) -> String {
    let mut lines = vec![
        format!("pool-admin serving {pools} pools on {base}"),
        format!("  stats:     {base}{PREFIX}/stats"),
        format!("  health:    {base}{PREFIX}/health"),
        format!("  optimize:  {base}{PREFIX}/optimize"),
        format!("  metrics:   {base}/metrics"),
        format!("  openapi:   {base}/api/v1/admin/openapi.json"),
    ];
    let dashboard_path = pool_admin::dashboard::PATH;
    match generated_token {
        Some(token) => {
            if dashboard {
                // The fragment never reaches the server; the page takes the token from it.
                lines.push(format!("  dashboard: {base}{dashboard_path}#token={token}"));
            }
            lines.push(format!(
                "  token:     {token} (generated; set POOL_ADMIN_TOKEN to choose one)"
            ));
        }
        None => {
            if dashboard {
                lines.push(format!("  dashboard: {base}{dashboard_path} (sign in with the token)"));
            }
            lines.push(
                "  token:     from the configuration (POOL_ADMIN_TOKEN or admin.token)".to_owned(),
            );
        }
    }
    let token = generated_token.unwrap_or("<token>");
    lines.push(format!("  try: curl -H 'Authorization: Bearer {token}' {base}{PREFIX}/stats"));
    lines.join("\n")
}

/// `pool-admin serve`: loads the configuration, starts the server and serves until SIGINT or
/// SIGTERM; the exit status is [`EXIT_CONFIG`] for a configuration error, 1 for any other
/// failure.
async fn serve(
    config: Option<&Path>,
    demo_load: bool,
    lookup: impl Fn(&str) -> Option<String>,
) -> ExitCode {
    let config = match load(config, lookup, &mut std::io::stderr()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let server = match Server::bind(&config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pool-admin: {e}");
            return exit_code(&e);
        }
    };
    let base = format!("http://{}", server.local_addr());
    let generated = server.token_was_generated().then(|| server.token().expose());
    let pools = server.state().registry().len();
    println!("{}", banner(&base, pools, config.admin.dashboard, generated));
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
            exit_code(&e)
        }
    }
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
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    logs(std::io::stderr, std::io::stderr().is_terminal(), filter).init();
    let env = |var: &str| std::env::var(var).ok();
    match Cli::parse().command {
        Command::Serve { config, demo_load } => serve(config.as_deref(), demo_load, env).await,
        Command::Monitor(args) => monitor::run(args).await,
        Command::Config { command: ConfigCommand::Check { config } } => {
            match load(config.as_deref(), env, &mut std::io::stderr()) {
                Ok(config) => {
                    println!("{}", serde_json::to_string_pretty(&config).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    /// `serve` exits 2 for the configurations `config check` refuses, as `config check` does;
    /// these used to get past loading and exit 1 from `Server::bind`.
    #[tokio::test]
    async fn serve_exits_2_for_a_configuration_error() {
        for vars in [
            [("POOL_ADMIN_LISTEN", "0.0.0.0:9233")],
            [("DATABASE_URL", "postgres://app:pw@db:notaport/app")],
            [("DATABASE_URL", "postgres://app@db/app?sslmode=bogus")],
        ] {
            assert_eq!(serve(None, false, env(&vars)).await, ExitCode::from(2), "{vars:?}");
        }
        let addr = "0.0.0.0:9233".parse().unwrap();
        assert_eq!(exit_code(&ServeError::TokenRequired(addr)), ExitCode::from(2));
        assert_eq!(exit_code(&ServeError::Random("no entropy".into())), ExitCode::FAILURE);
    }

    /// What `config check` and `serve` print for a configuration error shows no password, from
    /// any source: the TOML parser's view of a line it cannot parse, a value of the wrong type
    /// or that no setting takes, an unknown key, an environment variable. It still names the
    /// file, the line and what is wrong.
    #[tokio::test]
    async fn a_configuration_error_prints_no_password() {
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (
                &[],
                Some("[postgres.main]\nurl = \"postgres://app:hunter2@db.internal/app\n"),
                &[
                    "pool-admin: TOML file …: TOML parse error at line 2, column ",
                    "url",
                    "invalid basic string",
                ],
            ),
            (
                &[],
                Some("[postgres.main]\nurl = \"host=db password=hunter2\n"),
                &["TOML file …: TOML parse error at line 2, column "],
            ),
            (
                &[],
                Some("[admin]\ntoken = \"hunter2\nlisten = \"127.0.0.1:1\"\n"),
                &["TOML file …: TOML parse error at line 2, column "],
            ),
            (
                &[],
                Some(
                    "[postgres.main]\nreplicas = [\n  \"postgres://app:hunter2@r1/app\",\n  \"postgres://app:hunter2@r2/app\"\n",
                ),
                &["TOML file …: TOML parse error at line "],
            ),
            (
                &[],
                Some("[postgres.main]\npool_size = \"postgres://app:hunter2@db/app\"\n"),
                &[
                    "invalid value for postgres.main.pool_size = ",
                    "from TOML file …: expected usize",
                ],
            ),
            (
                &[],
                Some("[postgres.main]\nreset_on_return = \"postgres://app:hunter2@db/app\"\n"),
                &["postgres.main.reset_on_return in TOML file …: unknown variant"],
            ),
            (
                &[],
                Some("[postgres.main]\n\"postgres://app:hunter2@db/app\" = 1\n"),
                &["unknown key postgres.main.postgres://app:***@db/app in TOML file …"],
            ),
            (
                &[],
                Some("[postgres.\"postgres://app:hunter2@db/app\"]\npool_size = 0\n"),
                &[
                    "invalid value for postgres.postgres://app:***@db/app.pool_size = 0 from TOML file …",
                ],
            ),
            (
                &[("DATABASE_POOL_SIZE", "postgres://app:hunter2@db/app")],
                None,
                &[
                    "invalid value for postgres.main.pool_size = ",
                    "from environment variable DATABASE_POOL_SIZE",
                ],
            ),
            (
                &[("DATABASE_POOL_TIMEOUT", "host=db password=hunter2")],
                None,
                &[
                    "invalid value for postgres.main.pool_timeout = ",
                    "from environment variable DATABASE_POOL_TIMEOUT",
                ],
            ),
        ];
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/admin-main-tests");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, (vars, toml, expected)) in cases.iter().enumerate() {
            let path = dir.join(format!("{}-secret-{i}.toml", std::process::id()));
            if let Some(toml) = toml {
                std::fs::write(&path, toml).unwrap();
            }
            let file = toml.map(|_| path.as_path());
            let mut printed = Vec::new();
            let code = load(file, env(vars), &mut printed).map(|_| ()).unwrap_err();
            let printed = String::from_utf8(printed).unwrap();
            assert_eq!(code, ExitCode::from(2), "{printed}");
            assert!(!printed.contains("hunter2"), "a password printed:\n{printed}");
            for part in *expected {
                let part = part.replace('…', &path.display().to_string());
                assert!(
                    printed.contains(&part),
                    "{vars:?} {toml:?}: expected {part:?} in\n{printed}"
                );
            }
            if i == 0 {
                // `serve` goes through the same `load`, and stops there.
                assert_eq!(serve(file, false, env(vars)).await, ExitCode::from(2));
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    /// A generated token is printed in the `curl` line, ready to paste; a configured one never.
    #[test]
    fn banner_shows_only_a_generated_token() {
        let base = "http://127.0.0.1:9187";
        let stats = format!("{base}{PREFIX}/stats");
        let generated = banner(base, 3, true, Some("0123abcd"));
        let try_line = generated.lines().find(|l| l.starts_with("  try:")).unwrap();
        assert_eq!(try_line, format!("  try: curl -H 'Authorization: Bearer 0123abcd' {stats}"));
        assert!(generated.contains("/dashboard/#token=0123abcd"), "{generated}");
        let configured = banner(base, 3, true, None);
        let try_line = configured.lines().find(|l| l.starts_with("  try:")).unwrap();
        assert_eq!(try_line, format!("  try: curl -H 'Authorization: Bearer <token>' {stats}"));
        assert!(!configured.contains("#token="), "{configured}");
        assert!(configured.starts_with("pool-admin serving 3 pools on http://127.0.0.1:9187\n"));
    }

    /// A writer into a shared buffer, for reading what the subscriber wrote.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(ansi: bool) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = logs(move || writer.clone(), ansi, EnvFilter::new("info"));
        tracing::subscriber::with_default(subscriber, || tracing::warn!(pool = "main", "slow"));
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    /// Logs redirected to a file (not a terminal) carry no colour codes; on a terminal they do.
    #[test]
    fn logs_are_coloured_only_on_a_terminal() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/admin-main-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.log", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let ansi = file.is_terminal();
        drop(file);
        std::fs::remove_file(&path).unwrap();
        assert!(!ansi, "a file is not a terminal");
        let plain = logged(ansi);
        assert!(plain.contains("WARN") && plain.contains("slow"), "{plain:?}");
        assert!(!plain.contains('\x1b'), "{plain:?}");
        assert!(logged(true).contains('\x1b'), "colours on a terminal");
    }
}
