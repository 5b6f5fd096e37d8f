//! [`AutoTuner`]: applies the analysis's proposals through `Pool::resize`, with hysteresis.
//!
//! A proposal is applied only after `agree` windows in a row proposed a change the same way;
//! each change is followed by `cooldown` windows without changes; a step is bounded (at most
//! +50% or −25% of the current size, at least one connection); after a step up the tuner
//! checks that throughput or waits improved, else it steps back and remembers the size as a
//! cap. Each window counts once: a pool whose newest window was already decided on is skipped.
//! Every decision, applied or not, is logged with its evidence.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use crate::analysis::{Budget, Evidence, Settings, analyze};
use crate::sampler::Sampler;
use crate::window::Window;

/// How cautious the tuner is.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TunerSettings {
    /// Windows in a row that must agree on a direction before a change \[3\].
    pub agree: usize,
    /// Windows after a change before the next one (and before a step up is judged) \[3\].
    pub cooldown: usize,
    /// Largest step up, as a fraction of the current `pool_size` (at least 1) \[0.5\].
    pub max_grow: f64,
    /// Largest step down, as a fraction of the current `pool_size` (at least 1) \[0.25\].
    pub max_shrink: f64,
    /// A step up must raise checkouts per second by this fraction, or cut the p90 wait by
    /// 30%, to be kept \[0.05\].
    pub min_gain: f64,
    /// Never below this `pool_size` \[1\].
    pub min_pool_size: usize,
}

impl Default for TunerSettings {
    fn default() -> Self {
        TunerSettings {
            agree: 3,
            cooldown: 3,
            max_grow: 0.5,
            max_shrink: 0.25,
            min_gain: 0.05,
            min_pool_size: 1,
        }
    }
}

/// What the tuner did about one pool in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Raised `pool_size`.
    Grow,
    /// Lowered `pool_size`.
    Shrink,
    /// Undid a step up that did not pay off.
    StepBack,
    /// Changed nothing.
    Hold,
}

/// One logged decision with its inputs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Decision {
    /// The window count of the pool when it was taken.
    pub window: usize,
    /// The pool's name.
    pub pool: String,
    /// What was done.
    pub action: Action,
    /// `pool_size` before.
    pub from: usize,
    /// `pool_size` after.
    pub to: usize,
    /// Why, in words.
    pub reason: String,
    /// The analysis's numbers, when a recommendation drove it.
    pub evidence: Option<Evidence>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {} {:?} {} -> {}: {}",
            self.window, self.pool, self.action, self.from, self.to, self.reason
        )?;
        match &self.evidence {
            Some(e) => write!(f, " ({e})"),
            None => Ok(()),
        }
    }
}

impl Decision {
    /// Traces the decision with its inputs: a resize or step back at info, a hold at debug.
    fn trace(&self) {
        let evidence = self.evidence.as_ref().map(ToString::to_string);
        let evidence = evidence.as_deref().unwrap_or("none");
        if self.action == Action::Hold {
            tracing::debug!(pool = %self.pool, window = self.window, action = ?self.action, from = self.from, to = self.to, reason = %self.reason, evidence, "auto-tuner decision");
        } else {
            tracing::info!(pool = %self.pool, window = self.window, action = ?self.action, from = self.from, to = self.to, reason = %self.reason, evidence, "auto-tuner decision");
        }
    }
}

/// A resize the tuner wants applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The pool's name.
    pub pool: String,
    /// The new `pool_size`.
    pub pool_size: usize,
    /// `max_overflow`, unchanged.
    pub max_overflow: usize,
}

/// Decisions kept; the oldest go first.
const LOG_CAPACITY: usize = 10_000;

#[derive(Debug, Default)]
struct Tuning {
    seen: usize,
    /// [`Window::seq`] of the newest window decided on (0: none, or built by hand).
    last_seq: u64,
    direction: i8,
    streak: usize,
    cooldown: usize,
    check: Option<Check>,
    cap: Option<usize>,
}

#[derive(Debug)]
struct Check {
    from: usize,
    rate: f64,
    wait_p90: Duration,
}

/// Turns the analysis's proposals into bounded, confirmed resizes.
#[derive(Debug)]
pub struct AutoTuner {
    settings: TunerSettings,
    analysis: Settings,
    budgets: Vec<Budget>,
    pools: HashMap<String, Tuning>,
    log: Vec<Decision>,
}

impl AutoTuner {
    /// A tuner with these settings, analysis settings and budgets.
    pub fn new(settings: TunerSettings, analysis: Settings, budgets: Vec<Budget>) -> Self {
        AutoTuner { settings, analysis, budgets, pools: HashMap::new(), log: Vec::new() }
    }

    /// Every decision so far, oldest first.
    pub fn log(&self) -> &[Decision] {
        &self.log
    }

    /// Decides, for every pool with a window it has not seen yet, whether to resize. Pure
    /// apart from the tuner's own memory and the trace: the caller applies the changes. Each
    /// decision goes to [`log`](Self::log) and is traced (target `pool_optimizer::tuner`) with
    /// its reason and evidence: resizes and step backs at info, holds at debug.
    ///
    /// A window is new unless its [`Window::seq`] is nonzero and equal to that of the newest
    /// window of the pool decided on before: when the sampler added none (after a stats reset),
    /// the pool is skipped, with no log entry and no agreement, cooldown or check advanced.
    /// Windows built by hand (`seq` 0) are always new.
    pub fn decide(&mut self, windows: &BTreeMap<String, Vec<Window>>) -> Vec<Change> {
        let recommendations = analyze(windows, &self.analysis, &self.budgets);
        let s = self.settings.clone();
        let mut changes = Vec::new();
        for (pool, ws) in windows {
            let Some(latest) = ws.last() else { continue };
            let t = self.pools.entry(pool.clone()).or_default();
            if latest.seq != 0 && latest.seq == t.last_seq {
                continue;
            }
            t.last_seq = latest.seq;
            t.seen += 1;
            let current = latest.pool_size;
            let seen = t.seen;
            let mut log = |action, to, reason: String, evidence| {
                let decision = Decision {
                    window: seen,
                    pool: pool.clone(),
                    action,
                    from: current,
                    to,
                    reason,
                    evidence,
                };
                decision.trace();
                self.log.push(decision);
            };
            if t.cooldown > 0 {
                t.cooldown -= 1;
                if t.cooldown == 0
                    && let Some(check) = t.check.take()
                {
                    // From no throughput, any throughput is a full gain; none before and after
                    // (a stalled pool) is no gain at all.
                    let gain = if check.rate > 0.0 {
                        latest.rate() / check.rate - 1.0
                    } else if latest.rate() > 0.0 {
                        1.0
                    } else {
                        0.0
                    };
                    // A window without checkouts measured no wait: its p90 of 0 is not a cut.
                    let waits_better = latest.checkouts > 0
                        && latest.wait_p90.as_secs_f64() <= check.wait_p90.as_secs_f64() * 0.7;
                    if gain < s.min_gain && !waits_better {
                        t.cap = Some(check.from);
                        t.cooldown = s.cooldown;
                        t.streak = 0;
                        log(
                            Action::StepBack,
                            check.from,
                            format!(
                                "the step up gained {:.0}% throughput and did not cut waits; back to {} and capped there",
                                gain * 100.0,
                                check.from
                            ),
                            None,
                        );
                        changes.push(Change {
                            pool: pool.clone(),
                            pool_size: check.from,
                            max_overflow: latest.max_overflow,
                        });
                        continue;
                    }
                    log(
                        Action::Hold,
                        current,
                        format!("the step up paid off ({:+.0}% throughput)", gain * 100.0),
                        None,
                    );
                }
                continue;
            }
            let rec = recommendations.iter().find(|r| &r.pool == pool && r.proposed.is_some());
            let frozen = recommendations.iter().find(|r| &r.pool == pool && r.proposed.is_none());
            let Some(rec) = rec else {
                t.direction = 0;
                t.streak = 0;
                if let Some(f) = frozen {
                    log(
                        Action::Hold,
                        current,
                        format!("{}: {}", f.issue, f.suggestion),
                        Some(f.evidence.clone()),
                    );
                }
                continue;
            };
            let target = rec.proposed.map_or(current, |p| p.pool_size);
            let direction: i8 = if target > current { 1 } else { -1 };
            if direction == t.direction {
                t.streak += 1;
            } else {
                t.direction = direction;
                t.streak = 1;
            }
            if t.streak < s.agree {
                log(
                    Action::Hold,
                    current,
                    format!("{} ({} of {} agreeing windows)", rec.suggestion, t.streak, s.agree),
                    Some(rec.evidence.clone()),
                );
                continue;
            }
            let to = if direction > 0 {
                let step = ((current as f64 * s.max_grow).floor() as usize).max(1);
                let to = target.min(current + step);
                match t.cap {
                    Some(cap) if to > cap => cap,
                    _ => to,
                }
            } else {
                let step = ((current as f64 * s.max_shrink).floor() as usize).max(1);
                target.max(current.saturating_sub(step)).max(s.min_pool_size)
            };
            if to == current {
                log(
                    Action::Hold,
                    current,
                    format!("{}, but capped at {current}", rec.suggestion),
                    Some(rec.evidence.clone()),
                );
                continue;
            }
            let action = if to > current { Action::Grow } else { Action::Shrink };
            t.streak = 0;
            t.cooldown = s.cooldown;
            t.check = (action == Action::Grow).then(|| Check {
                from: current,
                rate: latest.rate(),
                wait_p90: rec.evidence.wait_p90,
            });
            log(
                action,
                to,
                format!("{}: {}", rec.issue, rec.suggestion),
                Some(rec.evidence.clone()),
            );
            changes.push(Change {
                pool: pool.clone(),
                pool_size: to,
                max_overflow: latest.max_overflow,
            });
        }
        if self.log.len() > 2 * LOG_CAPACITY {
            self.log.drain(..LOG_CAPACITY);
        }
        changes
    }

    /// Runs the tuner: every `interval`, samples the pools, decides and applies the changes
    /// through `Pool::resize`. A refused resize is logged and skipped. Every decision is traced
    /// with its inputs as [`decide`](Self::decide) takes it.
    pub fn spawn(
        mut self,
        mut sampler: Sampler,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                sampler.sample(tokio::time::Instant::now());
                for change in self.decide(&sampler.windows()) {
                    let Some(pool) = sampler.pools().get(&change.pool) else { continue };
                    match pool.resize(change.pool_size, change.max_overflow) {
                        Ok(()) => {
                            tracing::info!(pool = %change.pool, pool_size = change.pool_size, "auto-tuner resized the pool")
                        }
                        Err(e) => {
                            tracing::warn!(pool = %change.pool, error = %e, "auto-tuner resize refused")
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
