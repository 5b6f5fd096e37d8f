//! [`PgInstance`]: a throwaway PostgreSQL server, as a primary or a streaming replica.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::detached::{Detached, Service};
use crate::dirs::{as_postgres, claim_dir, give_to_postgres, remove_dir, run};
use crate::ports::free_port;

mod builder;

pub use builder::{PgBuilder, PgHba};

/// How many fresh ports a launcher tries when the server cannot bind its port.
pub(crate) const START_ATTEMPTS: usize = 5;

/// A throwaway PostgreSQL server with its own data directory, on 127.0.0.1 at a free port.
///
/// Its files live in `<target>/harness/pg-<port>`: the data directory `data/`, the
/// Unix socket ([`socket_dir`](Self::socket_dir)) and the server log `postgres.log`.
/// [`start`](Self::start) sets `trust` authentication for every user, including replication
/// connections from 127.0.0.1, and no TLS; [`builder`](Self::builder) starts one with TLS,
/// client certificates or passwords. The settings favour speed over durability (`fsync = off`).
///
/// When this process runs as root, every server program runs as the `postgres`
/// system user through `runuser`, since PostgreSQL refuses to run as root.
///
/// Dropping an instance stops the server immediately and removes its files, also while
/// a panicking test unwinds, unless it was [detached](Self::detach); a [frozen](Self::freeze)
/// server is thawed first.
///
/// # Examples
///
/// ```no_run
/// let pg = pool_harness::PgInstance::start()?;
/// assert_eq!(pg.psql("select 1 + 1")?, "2");
/// pg.restart()?;
/// # anyhow::Ok(())
/// ```
#[derive(Debug)]
pub struct PgInstance {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
    detached: bool,
    /// Stopped with `SIGSTOP` by [`freeze`](Self::freeze), until [`thaw`](Self::thaw).
    frozen: AtomicBool,
}

impl PgInstance {
    /// Creates a fresh cluster with `initdb` and starts it, waiting until it accepts connections.
    ///
    /// # Errors
    ///
    /// Fails if the PostgreSQL binaries are missing (saying which Debian package to
    /// install), if `initdb` or `pg_ctl start` fails, or if the server could not bind
    /// a port after several fresh ones.
    pub fn start() -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        Self::launch(bin, |pg| {
            pg.initdb()?;
            pg.start_server()
        })
    }

    /// Returns a builder for a server with TLS, another authentication or login roles.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use pool_harness::{PgHba, PgInstance, TestPki};
    ///
    /// let pki = TestPki::generate()?;
    /// let pg = PgInstance::builder()
    ///     .ssl(pki.server())
    ///     .ssl_ca(pki.ca_pem())
    ///     .hba(PgHba::ClientCert)
    ///     .start()?;
    /// let url = format!(
    ///     "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
    ///     pg.port(),
    ///     pki.ca_pem().display(),
    ///     pki.client_cert().display(),
    ///     pki.client_key().display(),
    /// );
    /// # let _ = url;
    /// # anyhow::Ok(())
    /// ```
    pub fn builder() -> PgBuilder {
        PgBuilder::default()
    }

    /// Starts a hot-standby replica streaming from this server, on a new free port.
    ///
    /// The replica is cloned with `pg_basebackup -R -X stream`, and this call returns
    /// once it accepts connections and `pg_is_in_recovery()` answers true. It copies the
    /// primary's configuration: its TLS files and settings, its `pg_hba.conf` and its roles.
    ///
    /// # Errors
    ///
    /// Fails if this server is not running, or if the backup or the replica's start fails.
    pub fn start_replica(&self) -> anyhow::Result<PgInstance> {
        let primary_port = self.port.to_string();
        let replica = Self::launch(self.bin.clone(), |pg| {
            run(as_postgres(self.bin.join("pg_basebackup"))
                .args(["-h", "127.0.0.1", "-p", &primary_port, "-U", "postgres"])
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-D"])
                .arg(pg.data_dir()))?;
            // The copied configuration names the primary's port and socket directory.
            pg.append_config()?;
            pg.start_server()
        })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while replica.psql("select pg_is_in_recovery()").ok().as_deref() != Some("t") {
            if Instant::now() > deadline {
                bail!("replica on port {} is not in recovery after 30s", replica.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(replica)
    }

    /// Returns `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Returns the TCP port the server listens on; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the directory of the server's Unix socket, `.s.PGSQL.<port>` (its
    /// `unix_socket_directories`): libpq's `host=<dir> port=<port>`. Connections over it are
    /// `trust`ed whatever the [`PgHba`].
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// Returns `postgres:///postgres?host=<socket dir>&port=PORT&user=postgres`: the superuser
    /// over the Unix socket, in a form that libpq and sqlx both read.
    pub fn socket_url(&self) -> String {
        format!(
            "postgres:///postgres?host={}&port={}&user=postgres",
            encode_query_value(&self.root.to_string_lossy()),
            self.port
        )
    }

    /// Returns the postmaster's process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// Returns the directory holding the data directory, the socket and the log.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Stops the server with a fast shutdown and waits until it has exited.
    ///
    /// # Errors
    ///
    /// Fails if `pg_ctl stop` fails, for instance because the server is not running.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`), as a crash would, and waits.
    ///
    /// # Errors
    ///
    /// Fails if `pg_ctl stop` fails, for instance because the server is not running.
    pub fn kill(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("immediate")
    }

    /// Starts the stopped server again, on the same port with the same data.
    ///
    /// # Errors
    ///
    /// Fails if `pg_ctl start` fails, for instance because another process took the port.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.start_server()
    }

    /// Stops the server with a fast shutdown and starts it again on the same port.
    ///
    /// # Errors
    ///
    /// Fails if stopping or starting fails.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_server()
    }

    /// Freezes the server as a stopped VM or a hung host would: `SIGSTOP` to the postmaster,
    /// then to every process it started (backends, the checkpointer, WAL senders...). Its
    /// sockets stay open and the kernel still accepts connections and acknowledges packets,
    /// but nothing answers: queries, connects and pings wait until the client gives up.
    /// [`thaw`](Self::thaw) resumes it; dropping the instance thaws it before stopping it.
    ///
    /// # Errors
    ///
    /// Fails if the server is not running or `kill` fails.
    pub fn freeze(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("freezing a server that is not running")?;
        self.frozen.store(true, Ordering::SeqCst);
        // The postmaster first, so that it starts nothing new; then its children, looked for
        // twice in case one was forked as the postmaster stopped.
        signal(pid, "STOP")?;
        let mut stopped = Vec::new();
        for _ in 0..2 {
            for child in children(pid) {
                if !stopped.contains(&child) {
                    // A child may have exited since it was listed.
                    let _ = signal(child, "STOP");
                    stopped.push(child);
                }
            }
        }
        Ok(())
    }

    /// Resumes a server stopped by [`freeze`](Self::freeze): `SIGCONT` to its processes, the
    /// postmaster last. Thawing a server that is not frozen does nothing.
    ///
    /// # Errors
    ///
    /// Fails if `kill` fails.
    pub fn thaw(&self) -> anyhow::Result<()> {
        if !self.frozen.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let Some(pid) = self.pid() else { return Ok(()) };
        for child in children(pid) {
            let _ = signal(child, "CONT");
        }
        signal(pid, "CONT")
    }

    /// Promotes this standby (one from [`start_replica`](Self::start_replica)) to a primary
    /// with `pg_ctl promote -w`, which returns once it accepts writes.
    ///
    /// # Errors
    ///
    /// Fails if the server is not a running standby or `pg_ctl promote` fails.
    pub fn promote(&self) -> anyhow::Result<()> {
        run(as_postgres(self.bin.join("pg_ctl"))
            .args(["promote", "-w", "-t", "60", "-D"])
            .arg(self.data_dir()))?;
        Ok(())
    }

    /// Whether the server is running, according to `pg_ctl status`.
    pub fn is_running(&self) -> bool {
        as_postgres(self.bin.join("pg_ctl"))
            .arg("status")
            .arg("-D")
            .arg(self.data_dir())
            .output()
            .is_ok_and(|out| out.status.success())
    }

    /// Runs `sql` with `psql -At` as user `postgres` on database `postgres`, over the Unix
    /// socket (so whatever the [`PgHba`]), returning the trimmed output.
    ///
    /// # Errors
    ///
    /// Fails if `psql` cannot connect or the statement fails.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let out = run(self.psql_command().args(["-c", sql]))?;
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Sets the password of `role` (`ALTER ROLE ... PASSWORD`, stored as a SCRAM-SHA-256 verifier
    /// under [`PgHba::ScramSha256`]); sessions already logged in carry on.
    ///
    /// # Errors
    ///
    /// Fails if the role does not exist or `psql` fails; the error never shows the password.
    pub fn set_password(&self, role: &str, password: &str) -> anyhow::Result<()> {
        let sql = format!("ALTER ROLE {} PASSWORD {}", quote_ident(role), quote_literal(password));
        self.psql_secret(&sql, password)
    }

    /// Returns the server's log so far (`postgres.log` in its directory), which says, for
    /// instance, why it refused a TLS client (`could not accept SSL connection: ...`). The line
    /// may come a moment after the client saw the refusal: the TLS alert goes out first.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
    }

    /// Leaves the server running after this value is gone, and returns what is needed to stop it later.
    pub fn detach(mut self) -> Detached {
        self.detached = true;
        crate::owner::disown(&self.root);
        Detached {
            service: Service::Postgres,
            url: self.url(),
            port: self.port,
            pid: self.pid(),
            dir: self.root.clone(),
        }
    }

    /// Claims a directory and a port, prepares and starts a server there, retrying on a
    /// fresh port when the server could not bind its port.
    fn launch(bin: PathBuf, prepare: impl Fn(&Self) -> anyhow::Result<()>) -> anyhow::Result<Self> {
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let Some(root) = claim_dir(&format!("pg-{port}"))? else { continue };
            let pg = PgInstance {
                bin: bin.clone(),
                root,
                port,
                detached: false,
                frozen: AtomicBool::new(false),
            };
            give_to_postgres(&pg.root)?;
            match prepare(&pg) {
                Ok(()) => return Ok(pg),
                Err(_) if pg.log().contains("could not bind") => continue,
                Err(e) => return Err(e.context(format!("log: {}", pg.log().trim()))),
            }
        }
        bail!("PostgreSQL could not bind a free port after {START_ATTEMPTS} attempts")
    }

    /// `psql` as `postgres` on database `postgres` over the Unix socket, stopping at the first
    /// error, with none of libpq's `PG*` variables from this process's environment.
    fn psql_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.bin.join("psql"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                cmd.env_remove(name);
            }
        }
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "postgres"])
            .arg("-h")
            .arg(&self.root)
            .args(["-p", &self.port.to_string()]);
        cmd
    }

    /// Runs `sql`, which holds `secret`, through `psql`'s standard input, so that the secret is
    /// on no command line, and fails without showing it.
    fn psql_secret(&self, sql: &str, secret: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::process::Stdio;
        let mut child = self
            .psql_command()
            .args(["-q", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running psql")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(sql.as_bytes()).context("writing to psql")?;
        }
        let out = child.wait_with_output().context("waiting for psql")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let redacted = stderr.replace(&quote_literal(secret), "'***'").replace(secret, "***");
            bail!("psql on port {} failed ({}): {}", self.port, out.status, redacted.trim());
        }
        Ok(())
    }

    fn initdb(&self) -> anyhow::Result<()> {
        run(as_postgres(self.bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", "-D"])
            .arg(self.data_dir()))?;
        self.append_config()?;
        let hba = self.data_dir().join("pg_hba.conf");
        append(&hba, "host replication all 127.0.0.1/32 trust\n")
    }

    /// Appends this instance's settings to `postgresql.conf`; later lines win over earlier ones.
    fn append_config(&self) -> anyhow::Result<()> {
        let mut conf = String::from("\n# pool-harness\n");
        let _ = writeln!(conf, "port = {}", self.port);
        let _ = writeln!(conf, "unix_socket_directories = '{}'", self.root.display());
        conf.push_str(
            "listen_addresses = '127.0.0.1'\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             hot_standby = on\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 200\n\
             shared_buffers = 16MB\n",
        );
        append(&self.data_dir().join("postgresql.conf"), &conf)
    }

    fn start_server(&self) -> anyhow::Result<()> {
        run(as_postgres(self.bin.join("pg_ctl"))
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.root.join("postgres.log")))?;
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        stop_data_dir(&self.bin, &self.data_dir(), mode)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        let _ = self.thaw();
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self.pg_ctl_stop("immediate");
        }
        remove_dir(&self.root);
    }
}

/// Stops a detached server whose files live in `root` and removes them.
pub(crate) fn stop_detached(root: &Path) -> anyhow::Result<()> {
    let data = root.join("data");
    if data.join("postmaster.pid").exists() {
        stop_data_dir(&bin_dir()?, &data, "fast")?;
    }
    remove_dir(root);
    Ok(())
}

/// Stops the server whose files were at `data` (the data directory, moved to `root` since)
/// and whose owner exited without stopping it: an immediate shutdown (`SIGQUIT`), only if the
/// process in its `postmaster.pid` is still the postmaster of `data`; waits until it has exited.
pub(crate) fn stop_abandoned(root: &Path, data: &Path) -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(root.join("data").join("postmaster.pid"))
        .ok()
        .and_then(|f| f.lines().next()?.trim().parse::<u32>().ok());
    let Some(pid) = pid else { return Ok(()) };
    // `.../bin/postgres -D <data>`: the same data directory, word for word.
    let words = crate::owner::command_words(pid);
    let ours = words.first().is_some_and(|w| w.ends_with("/postgres") || w == "postgres")
        && words.windows(2).any(|w| w[0] == "-D" && Path::new(&w[1]) == data);
    if !ours {
        return Ok(());
    }
    // A server frozen by its owner would never see the signal.
    for child in children(pid) {
        let _ = signal(child, "CONT");
    }
    let _ = signal(pid, "CONT");
    crate::owner::signal_and_wait(pid, "QUIT", Duration::from_secs(30))
}

fn stop_data_dir(bin: &Path, data: &Path, mode: &str) -> anyhow::Result<()> {
    run(as_postgres(bin.join("pg_ctl"))
        .args(["stop", "-w", "-t", "60", "-m", mode, "-D"])
        .arg(data))?;
    Ok(())
}

/// Sends `SIG<name>` to process `pid` with `kill`.
fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed: {status}");
    }
    Ok(())
}

/// The processes whose parent is `pid`, from `/proc/<pid>/stat`'s fourth field.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`: the command name may hold spaces and parentheses.
            let (_, rest) = stat.rsplit_once(") ")?;
            let ppid: u32 = rest.split_ascii_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Quotes an SQL identifier: `"name"`, with its double quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal: `'text'`, with its single quotes doubled (backslashes are
/// plain characters, `standard_conforming_strings` being on).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Percent-encodes a URL query value, keeping the characters that need no encoding and `/`.
fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Finds the newest `/usr/lib/postgresql/<version>/bin`, or a directory on `PATH` with `initdb`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        let versioned = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version: f64 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, bin)| bin);
        versioned.or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file())
        })
    });
    match found {
        Some(bin) => Ok(bin.clone()),
        None => bail!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin \
             or on PATH: install the Debian package `postgresql`"
        ),
    }
}
