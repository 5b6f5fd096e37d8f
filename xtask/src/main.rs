//! `cargo xtask`: the workspace's tasks as one small program, one module per task.

mod bench;
mod demo;
mod services;
mod soak;
mod test;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

/// The workspace's tasks; run them with `cargo xtask <task>`.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Start, stop or show the PostgreSQL (with a streaming replica on request) and Redis that
    /// the tests use.
    ///
    /// `up` prints `export` lines for `DATABASE_URL`, `DATABASE_REPLICA_URLS` (with `--replica`)
    /// and `REDIS_URL`: `eval "$(cargo xtask services up --replica)"` sets them in your shell.
    /// `cargo xtask services down` stops the throwaway servers that `up` started (under
    /// `target/harness/`), replicas included, and never a server it merely reused.
    Services {
        /// What to do: `up` reuses reachable servers or starts throwaway ones,
        /// `down` stops the ones xtask started, `status` shows what is reachable.
        #[arg(value_enum, default_value_t = services::Action::Up)]
        action: services::Action,
        /// With `up`: also provide a streaming replica, as `DATABASE_REPLICA_URLS`. Reuses
        /// `DATABASE_URL` and `DATABASE_REPLICA_URLS` when both are set and answer, else a
        /// throwaway primary and replica that `up --replica` started earlier, else starts such
        /// a pair (the shared PostgreSQL at 127.0.0.1:5432 is never reconfigured).
        #[arg(long)]
        replica: bool,
    },
    /// Bring the services up and run `cargo test --workspace -j2` against them.
    Test {
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The main job: the admin server with demo pools (PostgreSQL primary + replica, Redis
    /// `main` and `cache`) under a load generator, until Ctrl-C.
    Demo,
    /// Bring up the services a benchmark needs and run it with `pool-bench` in release mode.
    Bench {
        /// Which benchmark to run.
        #[arg(value_enum)]
        name: bench::Bench,
        /// Extra arguments for `pool-bench`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The chaos and soak run (`pool-soak`): the admin server's pools on throwaway PostgreSQL
    /// (primary and replica) and Redis under load and a schedule of faults, then checked
    /// invariants; writes `target/soak/report.json` and fails when an invariant does not hold.
    Soak {
        /// Minutes of load; the fault schedule is spread over them (one round per minute).
        #[arg(long, default_value_t = 1.0)]
        minutes: f64,
    },
    /// Check what docs/ARCHITECTURE.md promises: the dependency table and invariants (with
    /// `cargo tree`), that its code map names every source file, and that rustdoc and the
    /// Markdown docs speak in the crates' own terms; builds nothing.
    Tidy,
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().task {
        Task::Services { action, replica } => services::run(action, replica),
        Task::Test { args } => test::run(&args),
        Task::Bench { name, args } => bench::run(name, &args),
        Task::Demo => demo::run(),
        Task::Soak { minutes } => soak::run(minutes),
        Task::Tidy => tidy::run(),
    }
}

/// Returns the workspace root, the parent of this crate's directory.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives inside the workspace")
}

/// Returns a `cargo` command (the one running xtask, if any) to run in the workspace root.
fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd` and turns its exit status into this program's.
fn exit_code_of(mut cmd: Command) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    Ok(exit_code(status))
}

/// A child's exit status as this program's exit code.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}
