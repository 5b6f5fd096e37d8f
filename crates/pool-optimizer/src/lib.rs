//! `pool-optimizer`: how big should each pool be?
//!
//! - [`Sampler`] takes a stats snapshot of every pool of a registry at a fixed interval and keeps
//!   a bounded history of [`Window`]s per pool (checkouts per second, hold and wait times,
//!   timeouts, overflow, idle share, connect errors).
//! - [`analyze`] is a pure function — no IO, no clock — from windows, [`Settings`] and connection
//!   [`Budget`]s to [`Recommendation`]s, each with its evidence.
//! - [`AutoTuner`] (off unless you run it) applies proposals through `DynPool::resize` with
//!   hysteresis, cooldowns, bounded steps and a check that each step up paid off; every
//!   decision is logged with its inputs.
//!
//! The control law: `R`, the connections busy on average in the busiest recent window (the
//! connection-time in use inside it over its length, as the engine measures it, so a hold counts
//! only for its part inside the window; Little's law `checkouts/s × mean hold` for windows built
//! by hand), needs `≈ R + β·√R` connections (square-root staffing, β from the target probability
//! of waiting); grow when waits rise with flat hold time, never grow when hold time rises while
//! callers wait, whether or not load rose (the database is saturated), shrink when idle dominates
//! but never below what the load needs (and not at all without traffic), freeze on connect errors
//! and while no connection
//! comes back to waiting callers. `docs/optimizer.md` explains it with a worked example.

mod analysis;
mod sampler;
mod tuner;
mod window;

pub use crate::analysis::{
    Budget, Evidence, Recommendation, Settings, Severity, Sizes, analyze, beta_for, needed,
};
pub use crate::sampler::Sampler;
pub use crate::tuner::{Action, AutoTuner, Change, Decision, TunerSettings};
pub use crate::window::{BusyBasis, Window};
