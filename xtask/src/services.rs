//! `cargo xtask services`: find or start the PostgreSQL (with a streaming replica when asked)
//! and Redis that tests and developers use.
//!
//! Servers already listening at `DATABASE_URL` and `REDIS_URL` (by default the machine's
//! 127.0.0.1:5432 and 127.0.0.1:6379) are reused; otherwise throwaway ones are started
//! with `pool-harness`. A replica is reused only where `DATABASE_REPLICA_URLS` names one
//! beside a reachable `DATABASE_URL`; otherwise a throwaway primary and streaming replica are
//! started together, since giving a replica to a server xtask did not start would mean
//! reconfiguring and restarting it, and the machine's PostgreSQL is shared. Servers that `up`
//! leaves running are recorded in `target/services/state.json`, so that a later `down` stops
//! exactly them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::ValueEnum;
use pool_harness::{Detached, PgInstance, RedisInstance, Service, reachable};
use serde::{Deserialize, Serialize};

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The read replicas' URLs, comma-separated, as `pool-admin`'s configuration reads them.
const REPLICAS_VAR: &str = "DATABASE_REPLICA_URLS";

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

/// Runs one `services` action; `replica` asks `up` for a streaming replica too.
pub(crate) fn run(action: Action, replica: bool) -> anyhow::Result<ExitCode> {
    if replica && !matches!(action, Action::Up) {
        anyhow::bail!(
            "`--replica` only applies to `cargo xtask services up`: `down` stops every server \
             that `up` started, replicas included, and `status` shows them all"
        );
    }
    match action {
        Action::Up => {
            let services = Services::ensure(Needs { postgres: true, replica, redis: true })?;
            let (env, started) = services.detach();
            let mut state = load_state()?;
            state.extend(started);
            save_state(&state)?;
            // `eval "$(cargo xtask services up)"` sets them in the calling shell.
            for (name, url) in env {
                println!("export {name}={}", shell_quote(&url));
            }
            if !state.is_empty() {
                eprintln!("stop the servers xtask started with `cargo xtask services down`");
            }
        }
        Action::Down => {
            let mut failed = Vec::new();
            for started in load_state()? {
                let server = &started.server;
                match server.stop() {
                    Ok(()) => eprintln!("stopped {} at {}", started.role(), server.url),
                    Err(e) => {
                        eprintln!("could not stop {} at {}: {e:#}", started.role(), server.url);
                        failed.push(started);
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
            if let Ok(replicas) = std::env::var(REPLICAS_VAR) {
                for url in split_urls(&replicas) {
                    println!("{REPLICAS_VAR} has {url} ({})", describe(url));
                }
            }
            for started in load_state()? {
                let server = &started.server;
                let pid = server.pid.map_or_else(|| "?".to_owned(), |pid| pid.to_string());
                println!(
                    "started by xtask: {} at {} (pid {pid}, files in {}): {}",
                    started.role(),
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
    /// A streaming replica of that PostgreSQL, as `DATABASE_REPLICA_URLS` (implies `postgres`).
    pub(crate) replica: bool,
    pub(crate) redis: bool,
}

/// The services found or started for one task; servers started here stop when this is dropped.
#[derive(Debug)]
pub(crate) struct Services {
    env: Vec<(&'static str, String)>,
    // Declared before `postgres`, so that on drop the replica stops before its primary.
    replica: Option<PgInstance>,
    postgres: Option<PgInstance>,
    redis: Option<RedisInstance>,
}

impl Services {
    /// Finds a reachable server for each needed service, at its configured URL or one
    /// that `up` started earlier, and starts a throwaway one where there is none.
    ///
    /// With [`Needs::replica`], PostgreSQL is a primary and streaming replica reused together
    /// (see [`Self::ensure_pair`]) or started together.
    pub(crate) fn ensure(needs: Needs) -> anyhow::Result<Self> {
        let state = load_state()?;
        let mut services = Services { env: Vec::new(), replica: None, postgres: None, redis: None };
        if needs.replica {
            services.ensure_pair(&state)?;
        }
        for (service, needed) in
            [(Service::Postgres, needs.postgres && !needs.replica), (Service::Redis, needs.redis)]
        {
            if !needed {
                continue;
            }
            let (name, configured) = configured_url(service);
            let url = if reachable(&configured) {
                configured
            } else if let Some(earlier) = state.iter().find(|s| {
                // A replica is read-only: it never stands in for a primary.
                s.server.service == service && s.replica_of.is_none() && reachable(&s.server.url)
            }) {
                earlier.server.url.clone()
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

    /// Sets `DATABASE_URL` and `DATABASE_REPLICA_URLS` to a primary with streaming replicas.
    ///
    /// Reuses the configured ones when `DATABASE_REPLICA_URLS` is set and every URL there
    /// and at `DATABASE_URL` answers, else a pair that `up --replica` started earlier,
    /// else starts a throwaway primary and a replica streaming from it under
    /// `target/harness/`. The configured `DATABASE_URL` alone is never given a replica:
    /// that would mean reconfiguring and restarting a server that others may share.
    fn ensure_pair(&mut self, state: &[Started]) -> anyhow::Result<()> {
        let (name, configured) = configured_url(Service::Postgres);
        let configured_replicas = std::env::var(REPLICAS_VAR).unwrap_or_default();
        let configured_replicas = split_urls(&configured_replicas);
        let (primary, replicas) = if !configured_replicas.is_empty()
            && reachable(&configured)
            && configured_replicas.iter().all(|url| reachable(url))
        {
            (configured, configured_replicas.join(","))
        } else if let Some(pair) = earlier_pair(state) {
            pair
        } else {
            if configured_replicas.is_empty() {
                eprintln!(
                    "{REPLICAS_VAR} is unset, and xtask does not give {name}={configured} a \
                     replica (that would reconfigure and restart a server it did not start): \
                     starting a throwaway PostgreSQL primary and streaming replica"
                );
            } else {
                eprintln!(
                    "not every server at {name}={configured} and {REPLICAS_VAR}={} answers: \
                     starting a throwaway PostgreSQL primary and streaming replica",
                    configured_replicas.join(",")
                );
            }
            let primary = self.postgres.insert(PgInstance::start()?);
            let replica = self.replica.insert(primary.start_replica().with_context(|| {
                format!(
                    "starting a streaming replica of the throwaway primary at {} (its log and \
                     the replica's are under {})",
                    primary.url(),
                    pool_harness::target_dir().join("harness").display()
                )
            })?);
            (primary.url(), replica.url())
        };
        self.env.push((name, primary));
        self.env.push((REPLICAS_VAR, replicas));
        Ok(())
    }

    /// The environment variables that point tests at the services.
    pub(crate) fn env(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.env.iter().map(|(name, url)| (*name, url.as_str()))
    }

    /// Leaves the servers started here running, returning the environment and what to stop
    /// later, replicas before their primary.
    fn detach(self) -> (Vec<(&'static str, String)>, Vec<Started>) {
        let primary_url = self.postgres.as_ref().map(PgInstance::url);
        let replica = self
            .replica
            .map(|replica| Started { server: replica.detach(), replica_of: primary_url });
        let started = replica.into_iter().chain(
            self.postgres
                .map(PgInstance::detach)
                .into_iter()
                .chain(self.redis.map(RedisInstance::detach))
                .map(|server| Started { server, replica_of: None }),
        );
        (self.env, started.collect())
    }
}

/// A server that `up` left running, as `target/services/state.json` records it.
#[derive(Debug, Serialize, Deserialize)]
struct Started {
    #[serde(flatten)]
    server: Detached,
    /// The primary's URL when this server is a streaming replica of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replica_of: Option<String>,
}

impl Started {
    /// Names the server for messages: `Postgres`, `Redis` or `Postgres replica of <url>`.
    fn role(&self) -> String {
        match &self.replica_of {
            Some(primary) => format!("{:?} replica of {primary}", self.server.service),
            None => format!("{:?}", self.server.service),
        }
    }
}

/// Returns a primary that `up --replica` started earlier and the URLs of its replicas,
/// comma-separated, when the primary and at least one of its replicas answer.
fn earlier_pair(state: &[Started]) -> Option<(String, String)> {
    let primaries = state.iter().filter(|s| {
        s.server.service == Service::Postgres && s.replica_of.is_none() && reachable(&s.server.url)
    });
    primaries.into_iter().find_map(|primary| {
        let replicas: Vec<&str> = state
            .iter()
            .filter(|s| s.replica_of.as_deref() == Some(primary.server.url.as_str()))
            .map(|s| s.server.url.as_str())
            .filter(|url| reachable(url))
            .collect();
        (!replicas.is_empty()).then(|| (primary.server.url.clone(), replicas.join(",")))
    })
}

/// Splits a comma-separated list of URLs, dropping blanks.
fn split_urls(urls: &str) -> Vec<&str> {
    urls.split(',').map(str::trim).filter(|url| !url.is_empty()).collect()
}

/// Quotes `value` for a POSIX shell when it holds anything but URL-safe characters.
fn shell_quote(value: &str) -> String {
    let plain = value.bytes().all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b));
    if plain { value.to_owned() } else { format!("'{}'", value.replace('\'', r"'\''")) }
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

fn load_state() -> anyhow::Result<Vec<Started>> {
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
fn save_state(state: &[Started]) -> anyhow::Result<()> {
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
