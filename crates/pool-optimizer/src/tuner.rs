//! [`AutoTuner`]: applies the analysis's proposals through `DynPool::resize`, with hysteresis.
//!
//! A proposal is applied only after `agree` windows in a row proposed a change the same way;
//! each change is followed by `cooldown` windows without changes; a step is bounded (at most
//! +50% or −25% of the current size, at least one connection); after a step up the tuner
//! checks that throughput or waits improved, else it steps back and remembers the size as a
//! cap for a while. Each window counts once: a pool whose newest window was already decided on
//! is skipped. A pool whose size is not what the tuner left it at (an operator resized it, or
//! the tuner's own resize was refused) starts over from its new size: the tuner never undoes a
//! resize it did not make. Every decision, applied or not, is logged with its evidence.

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
    /// Never below this `pool_size` \[1\]. The tuner only stops shrinking there: a pool
    /// already smaller is not grown for it.
    pub min_pool_size: usize,
    /// Windows a cap set by a step back lasts \[30\]: long enough to stop retrying a step that
    /// did not pay off, short enough that a later rise in load gets another try.
    pub cap_windows: usize,
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
            cap_windows: 30,
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
    /// The pool's id (`backend:name`, as the sampler keys it).
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
    /// The pool's id (`backend:name`, as the sampler keys it).
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
    cap: Option<Cap>,
    /// The `pool_size` the pool's next window should show: the newest window's, or the size
    /// the tuner asked for. Another size means someone else resized the pool, or the tuner's
    /// resize was refused.
    expected: Option<usize>,
}

/// No step up past `size` for `windows` more windows: one from there did not pay off.
#[derive(Debug)]
struct Cap {
    size: usize,
    windows: usize,
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
    /// Decisions taken so far, trimmed ones included.
    decided: u64,
}

impl AutoTuner {
    /// A tuner with these settings, analysis settings and budgets.
    pub fn new(settings: TunerSettings, analysis: Settings, budgets: Vec<Budget>) -> Self {
        AutoTuner {
            settings,
            analysis,
            budgets,
            pools: HashMap::new(),
            log: Vec::new(),
            decided: 0,
        }
    }

    /// The decisions kept, oldest first: the last 10 000 at least (older ones are dropped in
    /// batches, so positions in it shift; use [`decided`](Self::decided) and
    /// [`decisions_since`](Self::decisions_since) to follow it).
    pub fn log(&self) -> &[Decision] {
        &self.log
    }

    /// How many decisions the tuner has taken, those dropped from the log included.
    pub fn decided(&self) -> u64 {
        self.decided
    }

    /// The decisions taken after [`decided`](Self::decided) returned `mark`, as far as the
    /// log still keeps them.
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # use pool_optimizer::{AutoTuner, TunerSettings};
    /// let mut tuner = AutoTuner::new(TunerSettings::default(), Default::default(), Vec::new());
    /// let mark = tuner.decided();
    /// tuner.decide(&BTreeMap::new());
    /// assert!(tuner.decisions_since(mark).is_empty());
    /// ```
    pub fn decisions_since(&self, mark: u64) -> &[Decision] {
        let new = usize::try_from(self.decided.saturating_sub(mark)).unwrap_or(usize::MAX);
        &self.log[self.log.len().saturating_sub(new)..]
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
            let decided = &mut self.decided;
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
                *decided += 1;
            };
            let expected = t.expected.replace(current);
            if let Some(expected) = expected
                && expected != current
            {
                // An operator's resize is theirs to judge, and a refused one changed nothing:
                // either way the pending check, agreement and cap were about another size.
                // The cooldown lets the windows catch up with the new size.
                t.check = None;
                t.cap = None;
                t.direction = 0;
                t.streak = 0;
                t.cooldown = s.cooldown;
                log(
                    Action::Hold,
                    current,
                    format!(
                        "pool_size is {current}, not the {expected} the tuner left it at: resized by someone else, or the tuner's resize was refused; starting over from {current}"
                    ),
                    None,
                );
                continue;
            }
            if let Some(cap) = &mut t.cap {
                if cap.windows == 0 {
                    t.cap = None;
                } else {
                    cap.windows -= 1;
                }
            }
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
                        t.cap = Some(Cap { size: check.from, windows: s.cap_windows });
                        t.cooldown = s.cooldown;
                        t.streak = 0;
                        t.expected = Some(check.from);
                        log(
                            Action::StepBack,
                            check.from,
                            format!(
                                "the step up gained {:.0}% throughput and did not cut waits; back to {} and capped there for {} windows",
                                gain * 100.0,
                                check.from,
                                s.cap_windows
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
            // Each branch moves only its own way: a cap never shrinks, a floor never grows.
            let to = if direction > 0 {
                let step = ((current as f64 * s.max_grow).floor() as usize).max(1);
                let to = target.min(current + step);
                match &t.cap {
                    Some(cap) if to > cap.size => cap.size.max(current),
                    _ => to,
                }
            } else {
                let step = ((current as f64 * s.max_shrink).floor() as usize).max(1);
                target.max(current.saturating_sub(step)).max(s.min_pool_size).min(current)
            };
            if to == current {
                let why = match &t.cap {
                    Some(cap) if direction > 0 => format!(
                        "a step up from {} did not pay off: capped there for {} more windows",
                        cap.size, cap.windows
                    ),
                    _ => format!("min_pool_size is {}", s.min_pool_size),
                };
                log(
                    Action::Hold,
                    current,
                    format!("{}, but {why}", rec.suggestion),
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
            t.expected = Some(to);
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
    /// through `DynPool::resize`. A refused resize is logged and skipped (the next window shows
    /// the size unchanged, and the tuner starts over from it). Every decision is traced with
    /// its inputs as [`decide`](Self::decide) takes it; the tuner moves into the task, so its
    /// [`log`](Self::log) is out of reach: to keep the decisions, call `decide` on a timer of
    /// your own, as `pool-admin` does.
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
