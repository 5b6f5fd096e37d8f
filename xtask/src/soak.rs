//! `cargo xtask soak [--minutes N]`: runs the chaos and soak run, `pool-soak` (in `soak/`),
//! through cargo, so that xtask's own build stays free of the pools, their drivers and HTTP.

use std::process::ExitCode;

/// Runs `cargo run -p pool-soak -- --minutes <minutes>`; the exit status is the soak's (non-zero
/// when an invariant does not hold).
pub(crate) fn run(minutes: f64) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(minutes > 0.0 && minutes.is_finite(), "--minutes must be positive");
    let mut cmd = crate::cargo();
    cmd.args(["run", "-p", "pool-soak", "--", "--minutes", &minutes.to_string()]);
    crate::exit_code_of(cmd)
}
