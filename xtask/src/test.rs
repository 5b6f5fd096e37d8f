//! `cargo xtask test`: the workspace's tests against running services, as CI runs them, with
//! the headless browser that the dashboard's end-to-end test drives. A full run (no arguments)
//! first checks pool-admin's feature combinations with clippy, and after the tests runs every
//! example of the workspace against the same services.

use std::path::Path;
use std::process::{Command, ExitCode};

use crate::services::{Needs, Services};

/// Debian's packages for the dashboard's browser test: Chromium and its WebDriver.
const BROWSER_PACKAGES: [&str; 2] = ["chromium", "chromium-driver"];

/// Where those packages put the two binaries the test runs.
const BROWSER_BINARIES: [&str; 2] = ["/usr/bin/chromium", "/usr/bin/chromedriver"];

/// The feature combinations `cargo clippy --all-targets` checks beside the workspace's own
/// build (every default feature): pool-admin with no backend and with each one alone, and the
/// examples with Redis alone (the worker, built without sqlx). Clippy builds no code, so each
/// costs a check of the package's tree, not a build.
const FEATURE_CHECKS: [(&str, &str); 4] = [
    ("pool-admin", ""),
    ("pool-admin", "postgres"),
    ("pool-admin", "redis"),
    ("pool-examples", "redis"),
];

/// Installs the browser if needed, brings the services up and runs
/// `cargo test --workspace -j2 <args>` with `DATABASE_URL` and `REDIS_URL` set; servers this
/// call started itself are stopped afterwards. With no `args` (the full run, as CI's), first
/// checks [`FEATURE_CHECKS`] with clippy, and after the tests runs pool-admin's unit tests in
/// its reduced builds ([`test_reduced_builds`]) and the examples ([`run_examples`]).
pub(crate) fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    if args.is_empty() {
        let code = check_features()?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    if let Err(e) = ensure_browser() {
        // The other tests can still run; the browser test fails and says how to install it.
        eprintln!("xtask test: {e:#}");
    }
    let services = Services::ensure(Needs { postgres: true, replica: false, redis: true })?;
    let mut cmd = crate::cargo();
    cmd.args(["test", "--workspace", "-j2"]).args(args).envs(services.env());
    let code = crate::exit_code_of(cmd)?;
    if code != ExitCode::SUCCESS || !args.is_empty() {
        return Ok(code);
    }
    let code = test_reduced_builds(&services)?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    run_examples(&services)
}

/// `cargo test -j2 -p pool-admin --lib --no-default-features --features <features>` for each
/// pool-admin build of [`FEATURE_CHECKS`]: its unit tests in the builds a user may pick, not only
/// in the one `--workspace` unifies. Stops at the first that fails.
fn test_reduced_builds(services: &Services) -> anyhow::Result<ExitCode> {
    for (package, features) in FEATURE_CHECKS.iter().filter(|(p, _)| *p == "pool-admin") {
        let with = if features.is_empty() { "no feature" } else { features };
        eprintln!("xtask test: {package}'s unit tests with {with}");
        let mut cmd = crate::cargo();
        cmd.args(["test", "-j2", "-p", package, "--lib", "--no-default-features"]);
        if !features.is_empty() {
            cmd.args(["--features", features]);
        }
        cmd.envs(services.env());
        let code = crate::exit_code_of(cmd)?;
        if code != ExitCode::SUCCESS {
            eprintln!("xtask test: {package}'s unit tests with {with} failed");
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds every example of the workspace (`cargo build --workspace --examples`: the artifacts
/// `cargo test` just built, so nothing is compiled again) and runs each with the services'
/// URLs; every example must exit 0. Ends with a closing line, `examples: N passed, N failed`.
fn run_examples(services: &Services) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let mut cmd = crate::cargo();
    cmd.args([
        "build",
        "--workspace",
        "--examples",
        "-j2",
        "--message-format=json-render-diagnostics",
    ]);
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build --examples")?;
    if !out.status.success() {
        eprintln!("xtask test: building the examples failed");
        return Ok(crate::exit_code(out.status));
    }
    let examples = examples_built(&String::from_utf8_lossy(&out.stdout));
    if examples.is_empty() {
        anyhow::bail!("cargo build --workspace --examples built no example");
    }
    let mut failed = Vec::new();
    for (name, path) in &examples {
        eprintln!("xtask test: running the example {name}");
        let status = Command::new(path)
            .envs(services.env())
            .status()
            .with_context(|| format!("running the example {name} ({path})"))?;
        if !status.success() {
            eprintln!("xtask test: the example {name} failed ({status})");
            failed.push(name.as_str());
        }
    }
    println!("examples: {} passed, {} failed", examples.len() - failed.len(), failed.len());
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask test: failed examples: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

/// The examples in `cargo build --message-format=json`'s output, as `(name, executable)`,
/// sorted by name.
fn examples_built(json_lines: &str) -> Vec<(String, String)> {
    let mut examples: Vec<(String, String)> = json_lines
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "example"))
        })
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?.to_owned();
            Some((name, m["executable"].as_str()?.to_owned()))
        })
        .collect();
    examples.sort();
    examples
}

/// `cargo clippy -j2 -p <package> --all-targets --no-default-features --features <features>
/// -- -D warnings` for each of [`FEATURE_CHECKS`]; stops at the first that fails.
fn check_features() -> anyhow::Result<ExitCode> {
    for (package, features) in FEATURE_CHECKS {
        let with = if features.is_empty() { "no feature" } else { features };
        eprintln!("xtask test: clippy on {package} with {with}");
        let mut cmd = crate::cargo();
        cmd.args(["clippy", "-j2", "-p", package, "--all-targets", "--no-default-features"]);
        if !features.is_empty() {
            cmd.args(["--features", features]);
        }
        cmd.args(["--", "-D", "warnings"]);
        let code = crate::exit_code_of(cmd)?;
        if code != ExitCode::SUCCESS {
            eprintln!("xtask test: clippy on {package} with {with} failed");
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Installs Debian's `chromium` and `chromium-driver` with apt-get when either binary is
/// missing (no browser download of its own: the packages come from the distribution's
/// mirrors); refreshes the package lists and tries once more when the first install fails.
///
/// # Errors
///
/// When apt-get is missing or the install fails, with the command to run by hand.
pub(crate) fn ensure_browser() -> anyhow::Result<()> {
    if BROWSER_BINARIES.iter().all(|b| Path::new(b).exists()) {
        return Ok(());
    }
    let hint = "install them with `apt-get install chromium chromium-driver` (as root)";
    eprintln!(
        "installing {} for the dashboard's browser test (apt-get) ...",
        BROWSER_PACKAGES.join(" and ")
    );
    let apt = |args: &[&str]| -> anyhow::Result<bool> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run apt-get ({e}); {hint}"))?;
        Ok(status.success())
    };
    let install: Vec<&str> =
        ["install", "-y", "--no-install-recommends"].into_iter().chain(BROWSER_PACKAGES).collect();
    if !apt(&install)? {
        eprintln!("apt-get install failed; refreshing the package lists and trying again");
        if !apt(&["update"])? || !apt(&install)? {
            anyhow::bail!("could not install {}; {hint}", BROWSER_PACKAGES.join(" and "));
        }
    }
    match BROWSER_BINARIES.iter().find(|b| !Path::new(b).exists()) {
        Some(missing) => anyhow::bail!("{missing} is still missing after the install; {hint}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::examples_built;

    #[test]
    fn the_examples_are_read_from_cargos_messages() {
        let lines = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"pool_examples"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["example"],"name":"sqlx_service"},"executable":"/t/examples/sqlx_service"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"pool-admin"},"executable":"/t/pool-admin"}
not json
{"reason":"compiler-artifact","target":{"kind":["example"],"name":"axum_service"},"executable":"/t/examples/axum_service"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            examples_built(lines),
            [
                ("axum_service".to_owned(), "/t/examples/axum_service".to_owned()),
                ("sqlx_service".to_owned(), "/t/examples/sqlx_service".to_owned()),
            ]
        );
    }
}
