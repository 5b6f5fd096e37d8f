//! `cargo xtask services`: find or start the PostgreSQL and Redis that tests use.
//!
//! Servers already listening at `DATABASE_URL` and `REDIS_URL` (by default the machine's
//! 127.0.0.1:5432 and 127.0.0.1:6379) are reused; otherwise throwaway ones are started
//! with `pool-harness`. Those that `up` leaves running are recorded in
//! `target/services/state.json`, so that a later `down` stops exactly them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::ValueEnum;
use pool_harness::{Detached, PgInstance, RedisInstance, Service, reachable};

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// What `cargo xtask services` does.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Action {
    /// Reuse reachable servers or start throwaway ones, and print their URLs.
    Up,
    /// Stop the servers that `up` started.
    Down,
    /// Show which servers are reachable.
    Status,
}

/// Runs one `services` action.
pub(crate) fn run(action: Action) -> anyhow::Result<ExitCode> {
    match action {
        Action::Up => {
            let services = Services::ensure(Needs { postgres: true, redis: true })?;
            let (env, started) = services.detach();
            let mut state = load_state()?;
            state.extend(started);
            save_state(&state)?;
            for (name, url) in env {
                println!("{name}={url}");
            }
        }
        Action::Down => {
            let mut failed = Vec::new();
            for server in load_state()? {
                match server.stop() {
                    Ok(()) => eprintln!("stopped {:?} at {}", server.service, server.url),
                    Err(e) => {
                        eprintln!("could not stop {:?} at {}: {e:#}", server.service, server.url);
                        failed.push(server);
                    }
                }
            }
            save_state(&failed)?;
            if !failed.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Action::Status => {
            for (name, url) in [configured_url(Service::Postgres), configured_url(Service::Redis)] {
                println!("{name}={url} ({})", describe(&url));
            }
            for server in load_state()? {
                let pid = server.pid.map_or_else(|| "?".to_owned(), |pid| pid.to_string());
                println!(
                    "started by xtask: {:?} at {} (pid {pid}, files in {}): {}",
                    server.service,
                    server.url,
                    server.dir.display(),
                    describe(&server.url)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Which services a task needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Needs {
    pub(crate) postgres: bool,
    pub(crate) redis: bool,
}

/// The services found or started for one task; servers started here stop when this is dropped.
#[derive(Debug)]
pub(crate) struct Services {
    env: Vec<(&'static str, String)>,
    postgres: Option<PgInstance>,
    redis: Option<RedisInstance>,
}

impl Services {
    /// Finds a reachable server for each needed service, at its configured URL or one
    /// that `up` started earlier, and starts a throwaway one where there is none.
    pub(crate) fn ensure(needs: Needs) -> anyhow::Result<Self> {
        let state = load_state()?;
        let mut services = Services { env: Vec::new(), postgres: None, redis: None };
        for (service, needed) in
            [(Service::Postgres, needs.postgres), (Service::Redis, needs.redis)]
        {
            if !needed {
                continue;
            }
            let (name, configured) = configured_url(service);
            let url = if reachable(&configured) {
                configured
            } else if let Some(earlier) =
                state.iter().find(|s| s.service == service && reachable(&s.url))
            {
                earlier.url.clone()
            } else {
                eprintln!(
                    "nothing answers at {name}={configured}: starting a throwaway {service:?}"
                );
                match service {
                    Service::Postgres => services.postgres.insert(PgInstance::start()?).url(),
                    Service::Redis => services.redis.insert(RedisInstance::start()?).url(),
                }
            };
            services.env.push((name, url));
        }
        Ok(services)
    }

    /// The environment variables that point tests at the services.
    pub(crate) fn env(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.env.iter().map(|(name, url)| (*name, url.as_str()))
    }

    /// Leaves the servers started here running, returning the environment and what to stop later.
    fn detach(self) -> (Vec<(&'static str, String)>, Vec<Detached>) {
        let started = self
            .postgres
            .map(PgInstance::detach)
            .into_iter()
            .chain(self.redis.map(RedisInstance::detach));
        (self.env, started.collect())
    }
}

/// Returns the variable naming a service's URL and its value, or the default.
fn configured_url(service: Service) -> (&'static str, String) {
    let (name, default) = match service {
        Service::Postgres => ("DATABASE_URL", DEFAULT_DATABASE_URL),
        Service::Redis => ("REDIS_URL", DEFAULT_REDIS_URL),
    };
    (name, std::env::var(name).unwrap_or_else(|_| default.to_owned()))
}

fn describe(url: &str) -> &'static str {
    if reachable(url) { "reachable" } else { "unreachable" }
}

fn state_file() -> PathBuf {
    pool_harness::target_dir().join("services").join("state.json")
}

fn load_state() -> anyhow::Result<Vec<Detached>> {
    let path = state_file();
    match std::fs::read_to_string(&path) {
        Ok(json) => {
            serde_json::from_str(&json).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the servers xtask left running, removing the file when there are none.
fn save_state(state: &[Detached]) -> anyhow::Result<()> {
    let path = state_file();
    if state.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        };
    }
    std::fs::create_dir_all(path.parent().expect("state file has a parent"))?;
    std::fs::write(&path, serde_json::to_string_pretty(state)?)
        .with_context(|| format!("writing {}", path.display()))
}
