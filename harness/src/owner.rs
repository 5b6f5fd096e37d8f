//! Who owns a throwaway server's directory, and the reaping of servers whose owner is gone.
//!
//! A [`PgInstance`](crate::PgInstance) or [`RedisInstance`](crate::RedisInstance) stops its
//! server on drop, even while a panicking test unwinds. A process killed outright (Ctrl-C on
//! `cargo test`, `SIGKILL`, a CI timeout) never drops it, and its servers would run on for good,
//! each holding a port, memory and a directory under `<target>/harness/`. So every claimed
//! directory names its owning process in a file `owner`, a detached server's says `detached`,
//! and the first claim of each process stops and removes what owners that have exited left
//! behind ([`reap_abandoned`]): their servers, and their test PKIs
//! ([`TestPki`](crate::TestPki)), which claim their directories the same way.
//!
//! The owner is `<pid> <start time> <pid namespace> <boot id>`: the start time tells a live
//! owner from a later process that reuses its pid, the boot id an owner from before a reboot,
//! and a directory owned from another pid namespace (a container sharing `target/`) is never
//! judged, since its owner cannot be seen from here.

use std::io::Write as _;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::dirs::{remove_dir, target_dir};

/// The file, in a claimed directory, that names its owner.
const OWNER: &str = "owner";

/// What [`OWNER`] holds for a server left running on purpose.
const DETACHED: &str = "detached";

/// What is known of a process from here.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Running, started at this time (clock ticks after boot).
    Running(String),
    /// Exited (a zombie has too).
    Exited,
    /// Cannot tell (its `/proc` entry exists but cannot be read).
    Unknown,
}

/// How process `pid` looks from here.
fn seen(pid: u32) -> Seen {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Seen::Exited,
        Err(_) => return Seen::Unknown,
    };
    // `pid (comm) state ppid ...`: the command name may hold spaces and parentheses, so the
    // fields are counted after its last `)`. The start time is field 22, the 20th after it.
    let Some((_, rest)) = stat.rsplit_once(") ") else { return Seen::Unknown };
    let mut fields = rest.split_ascii_whitespace();
    match (fields.next(), fields.nth(18)) {
        (Some("Z"), _) => Seen::Exited,
        (Some(_), Some(start)) => Seen::Running(start.to_owned()),
        _ => Seen::Unknown,
    }
}

/// Sends `SIG<signal>` to process `pid` and waits up to `within` until it has exited (a zombie
/// has: nobody may reap an orphan here).
pub(crate) fn signal_and_wait(pid: u32, signal: &str, within: Duration) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed: {status}");
    }
    let deadline = Instant::now() + within;
    while seen(pid) != Seen::Exited {
        if Instant::now() > deadline {
            bail!("process {pid} still running {within:?} after SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// This process's pid namespace and this boot's id.
fn here() -> Option<(String, String)> {
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?.to_string_lossy().into_owned();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some((ns, boot.trim().to_owned()))
}

/// Records this process as the owner of the freshly claimed `dir`. Where this process cannot
/// describe itself (no `/proc`), the directory gets no owner and is never reaped.
pub(crate) fn own(dir: &Path) {
    let pid = std::process::id();
    let (Seen::Running(start), Some((ns, boot))) = (seen(pid), here()) else {
        warn(format_args!("cannot read /proc/self: {} will not be reaped", dir.display()));
        return;
    };
    if let Err(e) = write(dir, &format!("{pid} {start} {ns} {boot}")) {
        warn(format_args!("{e:#}: {} will not be reaped", dir.display()));
    }
}

/// Records that `dir`'s server outlives its instance on purpose: it is never reaped.
pub(crate) fn disown(dir: &Path) {
    if let Err(e) = write(dir, DETACHED) {
        warn(format_args!("{e:#}: the detached server in {} may be reaped", dir.display()));
    }
}

/// Writes the owner file whole (a temporary file renamed over it), so a reader never sees a
/// half-written one.
fn write(dir: &Path, owner: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{OWNER}.tmp"));
    std::fs::write(&tmp, owner).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(OWNER))
        .with_context(|| format!("writing {}", dir.join(OWNER).display()))
}

/// A line on stderr that cannot panic, even with stderr closed.
fn warn(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "pool-harness: {message}");
}

/// Whether the owner file's text names a process that has exited, as seen from here: never
/// for a detached server, a live or unknown owner, or an owner in another pid namespace.
fn abandoned(owner: &str) -> bool {
    let Some((ns, boot)) = here() else { return false };
    let fields: Vec<&str> = owner.split_ascii_whitespace().collect();
    let [pid, start, owner_ns, owner_boot] = fields[..] else { return false };
    let Ok(pid) = pid.parse::<u32>() else { return false };
    if owner_ns != ns {
        return false;
    }
    if owner_boot != boot {
        return true;
    }
    match seen(pid) {
        Seen::Running(now) => now != start,
        Seen::Exited => true,
        Seen::Unknown => false,
    }
}

/// Runs [`reap_abandoned`] once per process, before its first claim.
pub(crate) fn reap_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        reap_abandoned();
    });
}

/// Stops every throwaway server under `<target>/harness/` whose owning process has exited
/// without stopping it, removes its directory, and returns the directories reaped (by the
/// names they had).
///
/// Directories of live owners, of detached servers (`cargo xtask services up`), without an
/// owner file (one being claimed this instant, or made by an older harness) or owned from
/// another pid namespace are left alone. Each abandoned directory is first renamed, so that of
/// two processes reaping at once only one handles it. A server is stopped only when the
/// process in its pid file is still that server; a directory whose port still answers after
/// that is kept, and reported on stderr. The directories of [`TestPki`](crate::TestPki)s whose
/// owner has exited are removed the same way. This runs by itself before a process's first
/// server starts.
pub fn reap_abandoned() -> Vec<PathBuf> {
    let harness = target_dir().join("harness");
    let Ok(entries) = std::fs::read_dir(&harness) else { return Vec::new() };
    let mut reaped = Vec::new();
    for dir in entries.flatten().map(|e| e.path()) {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let Some((kind, rest)) = name.split_once('-') else { continue };
        let port = match (kind, rest.parse::<u16>()) {
            ("pg" | "redis", Ok(port)) => Some(port),
            ("pki", _) => None,
            _ => continue,
        };
        let Ok(owner) = std::fs::read_to_string(dir.join(OWNER)) else { continue };
        if !abandoned(owner.trim()) {
            continue;
        }
        // Taken out of the claimable names first: another reaper's rename of it fails.
        let taken = harness.join(format!(".reaping-{name}-{}", std::process::id()));
        if std::fs::rename(&dir, &taken).is_err() {
            continue;
        }
        let Some(port) = port else {
            // A test PKI's certificates and keys: files only, no server to stop.
            remove_dir(&taken);
            reaped.push(dir);
            continue;
        };
        let stopped = if kind == "pg" {
            crate::postgres::stop_abandoned(&taken, &dir.join("data"))
        } else {
            crate::redis::stop_abandoned(&taken, port)
        };
        let result = stopped.and_then(|()| {
            // A killed server's other threads may hold its sockets a moment after it shows as
            // exited.
            let deadline = Instant::now() + Duration::from_secs(10);
            while answers(port) {
                if Instant::now() > deadline {
                    bail!("port {port} still answers");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                remove_dir(&taken);
                let pid = owner.split_ascii_whitespace().next().unwrap_or("?");
                warn(format_args!(
                    "stopped the server in {} that process {pid} left running",
                    dir.display()
                ));
                reaped.push(dir);
            }
            Err(e) => warn(format_args!(
                "could not stop the abandoned server of {} (now in {}): {e:#}",
                dir.display(),
                taken.display()
            )),
        }
    }
    reaped
}

/// Whether something accepts connections on 127.0.0.1:`port`.
fn answers(port: u16) -> bool {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// The command line of process `pid`, split into its arguments and the words of each (a server
/// that rewrites its process title puts it in the first argument).
pub(crate) fn command_words(pid: u32) -> Vec<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline)
        .split(['\0', ' '])
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_seen_running_until_it_exits() {
        let me = seen(std::process::id());
        assert!(matches!(me, Seen::Running(_)), "{me:?}");
        assert_eq!(seen(std::process::id()), me, "the same start time while it runs");

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(seen(pid), Seen::Exited, "an exited (and reaped) process");
    }

    #[test]
    fn only_an_owner_that_exited_here_has_abandoned_its_server() {
        let (ns, boot) = here().unwrap();
        let pid = std::process::id();
        let Seen::Running(start) = seen(pid) else { panic!("this process runs") };
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let exited = child.id();
        child.wait().unwrap();
        for (owner, expected, what) in [
            (format!("{pid} {start} {ns} {boot}"), false, "this live process"),
            (format!("{pid} 1{start} {ns} {boot}"), true, "a process that reused a live pid"),
            (format!("{exited} 1 {ns} {boot}"), true, "an exited process"),
            (format!("{pid} {start} {ns} another-boot"), true, "a process before a reboot"),
            (format!("{exited} 1 pid:[1] {boot}"), false, "another pid namespace"),
            (DETACHED.to_owned(), false, "a detached server"),
            (format!("{exited} 1"), false, "an owner file of another format"),
        ] {
            assert_eq!(abandoned(&owner), expected, "{what}: {owner}");
        }
    }
}
