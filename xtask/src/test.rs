//! `cargo xtask test`: the workspace's tests against running services, as CI runs them.

use std::process::ExitCode;

use crate::services::{Needs, Services};

/// Brings the services up and runs `cargo test --workspace -j2 <args>` with `DATABASE_URL`
/// and `REDIS_URL` set; servers this call started itself are stopped afterwards.
pub(crate) fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let services = Services::ensure(Needs { postgres: true, redis: true })?;
    let mut cmd = crate::cargo();
    cmd.args(["test", "--workspace", "-j2"]).args(args).envs(services.env());
    crate::exit_code_of(cmd)
}
