//! Where throwaway servers keep their files, and running commands as the server's user.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};

/// Returns the workspace's target directory.
///
/// That is `CARGO_TARGET_DIR` when set at run time or at build time (relative paths are
/// taken from the workspace root), else the `target` folder beside this crate.
pub fn target_dir() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().unwrap_or(manifest_dir);
    let configured = std::env::var_os("CARGO_TARGET_DIR")
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(Into::into));
    let dir = match configured {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    std::path::absolute(&dir).unwrap_or(dir)
}

/// Creates `<target>/harness/<name>`, returning `None` if it exists (so it works as a claim),
/// and records this process as its owner. A process's first claim first reaps the servers that
/// exited owners left behind (see [`crate::owner`]).
pub(crate) fn claim_dir(name: &str) -> anyhow::Result<Option<PathBuf>> {
    crate::owner::reap_once();
    let parent = target_dir().join("harness");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let dir = parent.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {
            crate::owner::own(&dir);
            Ok(Some(dir))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

/// Removes a directory tree, ignoring one that is already gone.
pub(crate) fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Whether this process runs as root, which PostgreSQL refuses.
pub(crate) fn is_root() -> bool {
    // The owner of /proc/self is the effective uid of the reading process.
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Hands `dir` to the `postgres` user when running as root, and makes its ancestors traversable.
pub(crate) fn give_to_postgres(dir: &Path) -> anyhow::Result<()> {
    if !is_root() {
        return Ok(());
    }
    chown_to_postgres(dir)?;
    for ancestor in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(mode | 0o001))
                .with_context(|| format!("making {} traversable", ancestor.display()))?;
        }
    }
    Ok(())
}

/// Hands the file or directory `path` to the `postgres` user when running as root: PostgreSQL
/// reads a private key only if the server's user owns it (or root does, with group access).
pub(crate) fn chown_to_postgres(path: &Path) -> anyhow::Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (uid, gid) = postgres_user()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {} to postgres", path.display()))
}

/// Writes `contents` to a new file at `path` that only its owner may read (mode 0600 from its
/// creation, never wider): a private key.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", path.display()))
}

/// Builds a command that runs as the `postgres` user when this process is root.
pub(crate) fn as_postgres(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        let mut cmd = Command::new("/usr/sbin/runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        // The postgres user may not be able to enter the caller's directory.
        cmd.current_dir("/");
        cmd
    } else {
        Command::new(program)
    }
}

/// Runs a command to completion and fails with its output when it exits non-zero.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Looks up the uid and gid of the `postgres` system user.
fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == "postgres" {
            return Ok((fields[2].parse()?, fields[3].parse()?));
        }
    }
    bail!("no `postgres` system user to run PostgreSQL as: install the Debian package `postgresql`")
}
