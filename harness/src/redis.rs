//! [`RedisInstance`]: a throwaway Redis server run as a child process.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::detached::{Detached, Service};
use crate::dirs::remove_dir;

mod builder;
mod cluster;
mod sentinel;

pub use builder::RedisBuilder;
pub use cluster::{KilledMaster, RedisCluster};
pub use sentinel::SentinelGroup;

/// The file, in the server's directory, holding the pid of the server last started there.
const SERVER_PID: &str = "server.pid";

/// A throwaway Redis server on 127.0.0.1 at a free port, keeping nothing on disk.
///
/// It runs `redis-server --save "" --appendonly no` in the foreground as a child of this
/// process, with its working directory and log in `<target>/harness/redis-<port>`.
/// [`start`](Self::start) gives it a plaintext port; [`builder`](Self::builder) starts one with
/// TLS, client certificates or a Unix socket.
/// Dropping an instance kills the server and removes its directory, also while a
/// panicking test unwinds, unless it was [detached](Self::detach).
///
/// # Examples
///
/// ```no_run
/// let mut redis = pool_harness::RedisInstance::start()?;
/// assert!(redis.ping());
/// redis.restart()?;
/// # anyhow::Ok(())
/// ```
#[derive(Debug)]
pub struct RedisInstance {
    dir: PathBuf,
    /// The plaintext port, or the TLS port of a server without one.
    port: u16,
    /// Whether `port` speaks plaintext.
    plaintext: bool,
    tls: Option<Tls>,
    /// The Unix socket's path, if it has one.
    socket: Option<PathBuf>,
    /// Configuration given on the command line after the harness's own.
    args: Vec<String>,
    /// A configuration file's text, written to `redis.conf` in its directory at the first start
    /// (the server may rewrite it, as a sentinel does) and named first on the command line.
    conf: Option<String>,
    /// Whether it runs as a sentinel (`--sentinel`).
    sentinel: bool,
    child: Option<Child>,
    detached: bool,
}

/// A server's TLS port and the files, in its directory, that it and the harness's `PING` read.
#[derive(Debug)]
struct Tls {
    port: u16,
    server: crate::CertFiles,
    ca: PathBuf,
    /// The certificate the harness presents, when the server requires one.
    client: Option<crate::CertFiles>,
}

impl RedisInstance {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// Fails if `redis-server` is not installed (saying which Debian package to
    /// install), if it exits or does not answer within 10 seconds, or if it could not
    /// bind a port after several fresh ones.
    pub fn start() -> anyhow::Result<Self> {
        RedisInstance::start_with(&[])
    }

    /// Starts a server like [`start`](Self::start), with more configuration on its command
    /// line, kept across restarts: e.g. `["--requirepass", "pw"]`, or an ACL user
    /// `["--user", "app", "on", ">pw", "~*", "&*", "+@all"]`. A server that requires a password
    /// counts as up when it answers `PING` with `-NOAUTH`.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); a configuration the server rejects shows in the error, from
    /// its log.
    pub fn start_with(args: &[&str]) -> anyhow::Result<Self> {
        RedisInstance::builder().args(args).start()
    }

    /// Returns a builder for a server with TLS, client certificates or a Unix socket.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use pool_harness::{RedisInstance, TestPki};
    ///
    /// let pki = TestPki::generate()?;
    /// let redis = RedisInstance::builder().tls(pki.server(), pki.ca_pem()).unix_socket().start()?;
    /// assert!(redis.url().starts_with("rediss://127.0.0.1:"));
    /// assert!(redis.unix_url().is_some_and(|url| url.starts_with("redis+unix:///")));
    /// # anyhow::Ok(())
    /// ```
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    /// Returns `redis://127.0.0.1:PORT`, or `rediss://127.0.0.1:PORT` for a server with TLS and
    /// no plaintext port.
    pub fn url(&self) -> String {
        let scheme = if self.plaintext { "redis" } else { "rediss" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Returns `rediss://127.0.0.1:TLS_PORT` for a server with TLS. The server's certificate
    /// must name `127.0.0.1` (as [`TestPki::server`](crate::TestPki::server)'s does) for a
    /// client that verifies host names.
    pub fn tls_url(&self) -> Option<String> {
        self.tls.as_ref().map(|tls| format!("rediss://127.0.0.1:{}", tls.port))
    }

    /// Returns `redis+unix:///path/to/redis.sock` for a server with a Unix socket: the form
    /// fred reads with its `unix-sockets` feature (the path is the socket's, so a database
    /// cannot be chosen in it).
    pub fn unix_url(&self) -> Option<String> {
        self.socket.as_ref().map(|path| format!("redis+unix://{}", path.display()))
    }

    /// Returns the TCP port of [`url`](Self::url); it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the TLS port of a server with TLS: [`port`](Self::port) unless it has a
    /// plaintext port as well.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls.as_ref().map(|tls| tls.port)
    }

    /// Returns the path of the Unix socket (`<dir>/redis.sock`, mode 0700) of a server with one.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// Returns the server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `PING` and reports whether the server answered within a second: `+PONG`, or
    /// `-NOAUTH` when it requires a password. A server without a plaintext port is asked over
    /// TLS by `redis-cli --tls` (given two seconds), trusting its CA and presenting the
    /// harness's client certificate when the server requires one.
    pub fn ping(&self) -> bool {
        self.try_ping().unwrap_or(false)
    }

    /// [`ping`](Self::ping), failing when `redis-cli` cannot be run.
    fn try_ping(&self) -> anyhow::Result<bool> {
        match &self.tls {
            Some(tls) if !self.plaintext => tls_ping(tls),
            _ => Ok(ping(self.port)),
        }
    }

    /// Kills the server (`SIGKILL`) and waits until it has exited; stopping a stopped server does nothing.
    ///
    /// # Errors
    ///
    /// Fails if the process cannot be killed or waited for.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Freezes the server (`SIGSTOP`): its sockets stay open and the kernel still accepts
    /// connections and data for it, but nothing is answered until [`thaw`](Self::thaw), as with
    /// a frozen VM or a process stuck in a long pause. Dropping a frozen instance still kills it.
    ///
    /// # Errors
    ///
    /// Fails if the server is not running or `kill` fails.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Lets a [frozen](Self::freeze) server run again (`SIGCONT`); it then answers what waited.
    ///
    /// # Errors
    ///
    /// Fails if the server is not running or `kill` fails.
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    /// Sends `SIG<signal>` to the server.
    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let Some(pid) = self.pid() else {
            bail!("redis-server on port {} is not running", self.port)
        };
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// Starts the stopped server again on the same port and waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// Fails if the server is running, if `redis-server` is missing, or if it exits or
    /// does not answer within 10 seconds (for instance because another process took the port).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("redis-server on port {} is already running", self.port);
        }
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        if let Some(text) = &self.conf {
            let conf = self.dir.join("redis.conf");
            if !conf.exists() {
                std::fs::write(&conf, text)?;
            }
            cmd.arg(conf);
        }
        if self.sentinel {
            cmd.arg("--sentinel");
        }
        cmd.arg("--port")
            .arg(if self.plaintext { port.as_str() } else { "0" })
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir"])
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if let Some(tls) = &self.tls {
            let auth_clients = if tls.client.is_some() { "yes" } else { "no" };
            cmd.args(["--tls-port", &tls.port.to_string(), "--tls-cert-file"])
                .arg(&tls.server.cert)
                .arg("--tls-key-file")
                .arg(&tls.server.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", auth_clients]);
        }
        if let Some(socket) = &self.socket {
            cmd.arg("--unixsocket").arg(socket).args(["--unixsocketperm", "700"]);
        }
        let child = cmd
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(mut child) => {
                // For the reaping of a server whose owner is killed (see `crate::owner`).
                if let Err(e) = std::fs::write(self.dir.join(SERVER_PID), child.id().to_string()) {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("writing {}: {e}", self.dir.join(SERVER_PID).display());
                }
                self.child = Some(child);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("redis-server not found on PATH: install the Debian package `redis-server`")
            }
            Err(e) => bail!("cannot run redis-server: {e}"),
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.try_ping() {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    self.stop()?;
                    return Err(e);
                }
            }
            let Some(child) = self.child.as_mut() else { bail!("redis-server is not running") };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!("redis-server on port {port} exited ({status}): {}", self.log().trim());
            }
            if Instant::now() > deadline {
                self.stop()?;
                bail!("redis-server on port {port} did not answer PING within 10s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the server and starts it again on the same port, with an empty data set.
    ///
    /// # Errors
    ///
    /// Fails if stopping or starting fails.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Leaves the server running after this value is gone, and returns what is needed to stop it later.
    ///
    /// [`Detached::stop`] sends `SHUTDOWN NOSAVE` in plaintext to [`port`](Self::port), so it
    /// stops only a server with a plaintext port.
    pub fn detach(mut self) -> Detached {
        self.detached = true;
        crate::owner::disown(&self.dir);
        Detached {
            service: Service::Redis,
            url: self.url(),
            port: self.port,
            pid: self.pid(),
            dir: self.dir.clone(),
        }
    }

    /// Returns the server's log so far (`redis.log` in its directory), which says, for
    /// instance, why it refused a TLS client (`peer did not return a certificate`). The line
    /// may come a moment after the client saw the refusal: the TLS alert goes out first.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisInstance {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        let _ = self.stop();
        remove_dir(&self.dir);
    }
}

/// Kills the server whose files are in `dir` and whose owner exited without stopping it
/// (`SIGKILL`), only if the process in its pid file is still a `redis-server` on `port`; waits
/// until it has exited.
pub(crate) fn stop_abandoned(dir: &Path, port: u16) -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(dir.join(SERVER_PID))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    let Some(pid) = pid else { return Ok(()) };
    // redis-server retitles itself `redis-server 127.0.0.1:PORT`.
    let words = crate::owner::command_words(pid);
    let ours = words.first().is_some_and(|w| w.ends_with("/redis-server") || w == "redis-server")
        && words.iter().any(|w| *w == format!("127.0.0.1:{port}"));
    if !ours {
        return Ok(());
    }
    crate::owner::signal_and_wait(pid, "KILL", Duration::from_secs(10))
}

/// Stops a detached server on `port` with `SHUTDOWN NOSAVE` and removes its directory `dir`.
pub(crate) fn stop_detached(port: u16, dir: &Path) -> anyhow::Result<()> {
    if let Ok(mut stream) = connect(port) {
        let _ = stream.write_all(b"SHUTDOWN NOSAVE\r\n");
        let _ = stream.read(&mut [0; 64]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while ping(port) {
        if Instant::now() > deadline {
            bail!("redis-server on port {port} is still running 10s after SHUTDOWN NOSAVE");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    remove_dir(dir);
    Ok(())
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(stream)
}

/// Sends `PING` over TLS with `redis-cli`, giving it up to two seconds.
fn tls_ping(tls: &Tls) -> anyhow::Result<bool> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "--cacert"]).arg(&tls.ca);
    if let Some(client) = &tls.client {
        cmd.arg("--cert").arg(&client.cert).arg("--key").arg(&client.key);
    }
    cmd.args(["-h", "127.0.0.1", "-p", &tls.port.to_string(), "PING"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("redis-cli not found on PATH: install the Debian package `redis-tools`")
        }
        Err(e) => bail!("cannot run redis-cli: {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut reply = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut reply)?;
    }
    // `PONG`, or the error `NOAUTH Authentication required.` (with `(error) ` on a terminal).
    let reply = reply.trim().trim_start_matches("(error) ");
    Ok(reply == "PONG" || reply.starts_with("NOAUTH "))
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = connect(port) else { return false };
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    // One line: `+PONG\r\n`, or `-NOAUTH Authentication required.\r\n`.
    let mut reply = Vec::new();
    let mut chunk = [0; 64];
    while !reply.ends_with(b"\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
    }
    reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH ")
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` (plaintext), giving it up to five seconds, and
/// returns what it printed.
pub(crate) fn cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("redis-cli not found on PATH: install the Debian package `redis-tools`")
        }
        Err(e) => bail!("cannot run redis-cli: {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("redis-cli -p {port} {} did not finish within 5s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    Ok(out)
}
