//! [`RedisInstance`]: a throwaway Redis server run as a child process.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::detached::{Detached, Service};
use crate::dirs::{claim_dir, remove_dir};
use crate::ports::free_port;
use crate::postgres::START_ATTEMPTS;

/// The file, in the server's directory, holding the pid of the server last started there.
const SERVER_PID: &str = "server.pid";

/// A throwaway Redis server on 127.0.0.1 at a free port, keeping nothing on disk.
///
/// It runs `redis-server --save "" --appendonly no` in the foreground as a child of this
/// process, with its working directory and log in `<target>/harness/redis-<port>`.
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
    port: u16,
    /// Configuration given on the command line after the harness's own.
    args: Vec<String>,
    child: Option<Child>,
    detached: bool,
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
        let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let Some(dir) = claim_dir(&format!("redis-{port}"))? else { continue };
            let mut redis =
                RedisInstance { dir, port, args: args.clone(), child: None, detached: false };
            match redis.start_again() {
                Ok(()) => return Ok(redis),
                Err(_) if redis.log().contains("Address already in use") => continue,
                Err(e) => return Err(e),
            }
        }
        bail!("redis-server could not bind a free port after {START_ATTEMPTS} attempts")
    }

    /// Returns `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Returns the TCP port the server listens on; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `PING` and reports whether the server answered within a second: `+PONG`, or
    /// `-NOAUTH` when it requires a password.
    pub fn ping(&self) -> bool {
        ping(self.port)
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
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir"])
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(mut child) => {
                // For the reaping of a server whose owner is killed (see `crate::owner`).
                if let Err(e) = std::fs::write(self.dir.join(SERVER_PID), child.id().to_string()) {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("writing {}: {e}", self.dir.join(SERVER_PID).display());
                }
                self.child.insert(child)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("redis-server not found on PATH: install the Debian package `redis-server`")
            }
            Err(e) => bail!("cannot run redis-server: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
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

    fn log(&self) -> String {
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
