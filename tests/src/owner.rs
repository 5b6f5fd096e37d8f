//! Who owns a throwaway server's directory, and the reaping of servers whose owner is gone.
//!
//! A [`PgInstance`](crate::PgInstance) or [`RedisInstance`](crate::RedisInstance) stops its
//! server on drop, even while a panicking test unwinds. A process killed outright (Ctrl-C on
//! `cargo test`, `SIGKILL`, a CI timeout) never drops it, and its servers would run on for good,
//! each holding a port, memory and a directory under `<target>/harness/`. So every claimed
//! directory names its owning process in a file `owner` (`<pid> <start time>`, the start time
//! telling a live owner from a later process that reuses its pid), a detached server's says
//! `detached`, and the first claim of each process stops and removes what owners that have
//! exited left behind ([`reap_abandoned`]).

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::Context as _;

use crate::dirs::target_dir;

/// The file, in a claimed directory, that names its owner.
const OWNER: &str = "owner";

/// What [`OWNER`] holds for a server left running on purpose.
const DETACHED: &str = "detached";

/// `<pid> <start time>` of process `pid`, or `None` when it is not running (a zombie is not).
fn identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: the command name may hold spaces and parentheses, so the
    // fields are counted after its last `)`. The start time is field 22, the 20th after it.
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_ascii_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    let start = fields.nth(18)?;
    Some(format!("{pid} {start}"))
}

/// Records this process as the owner of the freshly claimed `dir`.
pub(crate) fn own(dir: &Path) -> anyhow::Result<()> {
    let me = identity(std::process::id()).context("reading this process's /proc/self/stat")?;
    write(dir, &me)
}

/// Records that `dir`'s server outlives its instance on purpose: it is never reaped.
pub(crate) fn disown(dir: &Path) {
    let _ = write(dir, DETACHED);
}

/// Writes the owner file whole (a temporary file renamed over it), so a reader never sees a
/// half-written one.
fn write(dir: &Path, owner: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{OWNER}.tmp"));
    std::fs::write(&tmp, owner).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(OWNER))
        .with_context(|| format!("writing {}", dir.join(OWNER).display()))
}

/// Runs [`reap_abandoned`] once per process, before its first claim.
pub(crate) fn reap_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        reap_abandoned();
    });
}

/// Stops every throwaway server under `<target>/harness/` whose owning process has exited
/// without stopping it, removes its directory, and returns the directories reaped.
///
/// Directories of live owners, of detached servers (`cargo xtask services up`) and without an
/// owner file (one being claimed this instant, or made by an older harness) are left alone. It
/// runs by itself before a process's first server starts; a failure to stop one server is
/// reported on stderr and leaves its directory for a later try.
pub fn reap_abandoned() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(target_dir().join("harness")) else { return Vec::new() };
    let mut reaped = Vec::new();
    for dir in entries.flatten().map(|e| e.path()) {
        let Ok(owner) = std::fs::read_to_string(dir.join(OWNER)) else { continue };
        let owner = owner.trim();
        let alive = owner
            .split_once(' ')
            .and_then(|(pid, _)| pid.parse().ok())
            .and_then(identity)
            .is_some_and(|now| now == owner);
        if owner == DETACHED || alive {
            continue;
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let stopped = if name.starts_with("pg-") {
            crate::postgres::stop_abandoned(&dir)
        } else if name.starts_with("redis-") {
            crate::redis::stop_abandoned(&dir)
        } else {
            continue;
        };
        match stopped {
            Ok(()) => {
                eprintln!(
                    "pool-harness: stopped the server in {} that process {} left running",
                    dir.display(),
                    owner.split(' ').next().unwrap_or(owner)
                );
                reaped.push(dir);
            }
            Err(e) => eprintln!(
                "pool-harness: could not stop the abandoned server in {}: {e:#}",
                dir.display()
            ),
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_tells_this_process_from_an_exited_one() {
        let me = identity(std::process::id()).expect("this process runs");
        assert!(me.starts_with(&format!("{} ", std::process::id())), "{me}");
        assert_eq!(identity(std::process::id()), Some(me), "stable while it runs");

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(identity(pid), None, "an exited (and reaped) process has no identity");
    }
}
