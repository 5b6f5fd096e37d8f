//! The auto-tuner in virtual time: a queue with Poisson arrivals and exponential hold times
//! (M/M/c with timeouts), resized by the tuner between windows.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use super::*;
use crate::analysis::{beta_for, needed};

/// An M/M/c queue with abandonment after `timeout`, in nanoseconds of virtual time.
struct Queue {
    rng: fastrand::Rng,
    arrivals_per_sec: f64,
    hold_mean: f64,
    timeout: u64,
    now: u64,
    next_arrival: u64,
    busy: BinaryHeap<Reverse<u64>>,
    queue: VecDeque<u64>,
}

fn percentile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    Duration::from_nanos(
        sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1],
    )
}

impl Queue {
    fn new(seed: u64, arrivals_per_sec: f64, hold_mean: Duration, timeout: Duration) -> Queue {
        let mut q = Queue {
            rng: fastrand::Rng::with_seed(seed),
            arrivals_per_sec,
            hold_mean: hold_mean.as_secs_f64(),
            timeout: timeout.as_nanos() as u64,
            now: 0,
            next_arrival: 0,
            busy: BinaryHeap::new(),
            queue: VecDeque::new(),
        };
        q.next_arrival = q.exp(1.0 / arrivals_per_sec);
        q
    }

    fn exp(&mut self, mean_secs: f64) -> u64 {
        (-(1.0 - self.rng.f64()).ln() * mean_secs * 1e9) as u64
    }

    /// Runs one window of `len` with `size` connections and returns what a sampler would see.
    fn window(&mut self, len: Duration, size: usize) -> Window {
        let end = self.now + len.as_nanos() as u64;
        let (mut waits, mut holds, mut timeouts) = (Vec::new(), Vec::new(), 0u64);
        // Connection-nanoseconds in use: the integral of busy connections over the window.
        let mut in_use = 0u128;
        let start = |q: &mut Queue, arrived: u64, waits: &mut Vec<u64>, holds: &mut Vec<u64>| {
            let hold = q.exp(q.hold_mean);
            waits.push(q.now - arrived);
            holds.push(hold);
            q.busy.push(Reverse(q.now + hold));
        };
        // Connections added by a resize serve the queue at once.
        while self.busy.len() < size
            && let Some(arrived) = self.queue.pop_front()
        {
            if self.now - arrived > self.timeout {
                timeouts += 1;
            } else {
                start(self, arrived, &mut waits, &mut holds);
            }
        }
        loop {
            let done = self.busy.peek().map_or(u64::MAX, |r| r.0);
            let next = done.min(self.next_arrival);
            if next >= end {
                break;
            }
            in_use += self.busy.len() as u128 * u128::from(next - self.now);
            self.now = next;
            if done <= self.next_arrival {
                self.busy.pop();
                while self.busy.len() < size
                    && let Some(arrived) = self.queue.pop_front()
                {
                    if self.now - arrived > self.timeout {
                        timeouts += 1;
                    } else {
                        start(self, arrived, &mut waits, &mut holds);
                        break;
                    }
                }
            } else {
                let arrived = self.now;
                self.next_arrival = self.now + self.exp(1.0 / self.arrivals_per_sec);
                if self.busy.len() < size {
                    start(self, arrived, &mut waits, &mut holds);
                } else {
                    self.queue.push_back(arrived);
                }
            }
        }
        in_use += self.busy.len() as u128 * u128::from(end - self.now);
        self.now = end;
        let before = self.queue.len();
        self.queue.retain(|&a| end - a <= self.timeout);
        timeouts += (before - self.queue.len()) as u64;
        waits.sort_unstable();
        holds.sort_unstable();
        let mean =
            |v: &[u64]| Duration::from_nanos(v.iter().sum::<u64>() / (v.len().max(1) as u64));
        Window {
            pool: "sim".to_owned(),
            duration: len,
            pool_size: size,
            max_overflow: 0,
            checkouts: waits.len() as u64,
            releases: waits.len() as u64,
            hold_mean: mean(&holds),
            hold_p90: percentile(&holds, 0.9),
            wait_mean: mean(&waits),
            wait_p50: percentile(&waits, 0.5),
            wait_p90: percentile(&waits, 0.9),
            wait_p99: percentile(&waits, 0.99),
            timeouts,
            connect_errors: 0,
            overflow: 0,
            open: size,
            in_use_time: Some(Duration::from_nanos(in_use as u64)),
            seq: 0,
        }
    }
}

/// Runs the tuner against the queue for `windows` windows from `start` connections and
/// returns the size in force during each window.
fn converge(start: usize, windows: usize, seed: u64) -> (Vec<usize>, AutoTuner) {
    let mut queue = Queue::new(seed, 200.0, Duration::from_millis(50), Duration::from_secs(1));
    let mut tuner = AutoTuner::new(TunerSettings::default(), Settings::default(), Vec::new());
    let mut history: BTreeMap<String, Vec<Window>> = BTreeMap::new();
    let mut size = start;
    let mut sizes = Vec::new();
    for _ in 0..windows {
        sizes.push(size);
        let w = queue.window(Duration::from_secs(10), size);
        let ws = history.entry("sim".to_owned()).or_default();
        ws.push(w);
        if ws.len() > 30 {
            ws.remove(0);
        }
        for change in tuner.decide(&history) {
            size = change.pool_size;
        }
    }
    (sizes, tuner)
}

/// How often the direction of change flipped.
fn reversals(sizes: &[usize]) -> usize {
    let steps: Vec<i64> =
        sizes.windows(2).map(|w| w[1] as i64 - w[0] as i64).filter(|d| *d != 0).collect();
    steps.windows(2).filter(|d| d[0].signum() != d[1].signum()).count()
}

/// Windows until the size stopped changing for good.
fn settled_at(sizes: &[usize]) -> usize {
    let last = *sizes.last().unwrap();
    sizes.iter().rposition(|&s| s != last).map_or(0, |i| i + 1)
}

#[test]
fn starting_too_small_it_grows_to_the_predicted_size_and_stays() {
    let predicted = needed(200.0 * 0.05, beta_for(0.05));
    assert_eq!(predicted, 16);
    for seed in 1..=5 {
        let (sizes, tuner) = converge(2, 80, seed);
        let settled = settled_at(&sizes);
        eprintln!("seed {seed}: sizes per window {sizes:?}, settled after {settled} windows");
        let last = *sizes.last().unwrap();
        assert!(
            last.abs_diff(predicted) <= 1,
            "settled at {last}, predicted {predicted}: {sizes:?}"
        );
        assert!(settled <= 60, "took {settled} windows: {sizes:?}");
        let changes = sizes.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(changes <= 8, "{changes} changes: {sizes:?}");
        assert!(reversals(&sizes) <= 1, "no oscillation: {sizes:?}");
        assert!(
            !tuner.log().iter().any(|d| d.action == Action::StepBack),
            "every step up paid off"
        );
    }
}

#[test]
fn starting_too_large_it_shrinks_to_the_predicted_size_never_below() {
    let predicted = 16;
    for seed in 1..=5 {
        let (sizes, _) = converge(50, 80, seed);
        let settled = settled_at(&sizes);
        eprintln!("seed {seed}: sizes per window {sizes:?}, settled after {settled} windows");
        let last = *sizes.last().unwrap();
        assert!(
            last.abs_diff(predicted) <= 1,
            "settled at {last}, predicted {predicted}: {sizes:?}"
        );
        assert!(
            sizes.iter().all(|&s| s + 1 >= predicted),
            "never below what the load needs: {sizes:?}"
        );
        assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "monotone, no oscillation: {sizes:?}");
        assert!(settled <= 60, "took {settled} windows: {sizes:?}");
    }
}

#[test]
fn a_step_up_that_does_not_raise_throughput_is_undone_and_capped() {
    let mut tuner = AutoTuner::new(
        TunerSettings { agree: 1, cooldown: 1, ..TunerSettings::default() },
        Settings { min_windows: 1, ..Settings::default() },
        Vec::new(),
    );
    // A pool whose waits stay high and whose throughput stays flat whatever its size: the
    // limit is elsewhere.
    let w = |size| Window {
        pool: "p".to_owned(),
        duration: Duration::from_secs(10),
        pool_size: size,
        checkouts: 1000,
        releases: 1000,
        hold_mean: Duration::from_millis(100),
        wait_p90: Duration::from_millis(100),
        open: size,
        ..Window::default()
    };
    let mut history = BTreeMap::from([("p".to_owned(), vec![w(4)])]);
    let grow = tuner.decide(&history);
    assert_eq!(grow, vec![Change { pool: "p".to_owned(), pool_size: 6, max_overflow: 0 }]);
    history.get_mut("p").unwrap().push(w(6));
    let back = tuner.decide(&history);
    assert_eq!(back, vec![Change { pool: "p".to_owned(), pool_size: 4, max_overflow: 0 }]);
    history.get_mut("p").unwrap().push(w(4));
    assert!(tuner.decide(&history).is_empty(), "cooldown after the step back");
    history.get_mut("p").unwrap().push(w(4));
    assert!(tuner.decide(&history).is_empty(), "capped at 4");
    let actions: Vec<Action> = tuner.log().iter().map(|d| d.action).collect();
    assert_eq!(actions, vec![Action::Grow, Action::StepBack, Action::Hold]);
    assert!(tuner.log()[1].reason.contains("back to 4 and capped there"), "{}", tuner.log()[1]);
    assert!(
        tuner.log()[2].reason.contains("but a step up from 4 did not pay off: capped there"),
        "{}",
        tuner.log()[2]
    );
}

/// Feeds `p`'s next window and returns the sizes the tuner asked for.
fn next(
    tuner: &mut AutoTuner,
    history: &mut BTreeMap<String, Vec<Window>>,
    w: Window,
) -> Vec<usize> {
    history.entry("p".to_owned()).or_default().push(w);
    tuner.decide(history).into_iter().map(|c| c.pool_size).collect()
}

#[test]
fn a_resize_the_tuner_did_not_make_is_never_undone() {
    // Waits high and throughput flat at every size: every step up fails its check.
    let flat = |size| window(size, 1000, 0);
    let last = |t: &AutoTuner| t.log().last().unwrap().to_string();

    // An operator raises a capped pool: the cap was about the old size, so the tuner grows
    // from the new one rather than cutting it back to the cap.
    let (mut t, mut h) = (eager_tuner(1), BTreeMap::new());
    assert_eq!(next(&mut t, &mut h, flat(4)), [6]);
    assert_eq!(next(&mut t, &mut h, flat(6)), [4], "stepped back and capped at 4");
    assert_eq!(next(&mut t, &mut h, flat(4)), [] as [usize; 0], "cooldown");
    assert_eq!(next(&mut t, &mut h, flat(4)), [] as [usize; 0], "capped");
    assert_eq!(next(&mut t, &mut h, flat(20)), [] as [usize; 0]);
    assert!(last(&t).contains("not the 4 the tuner left it at"), "{}", last(&t));
    assert_eq!(next(&mut t, &mut h, flat(20)), [] as [usize; 0], "a cooldown for the new size");
    assert_eq!(next(&mut t, &mut h, flat(20)), [21], "grows from the operator's size");

    // An operator resizes during the check of a step up: no step back over their size.
    let (mut t, mut h) = (eager_tuner(1), BTreeMap::new());
    assert_eq!(next(&mut t, &mut h, flat(4)), [6]);
    assert_eq!(next(&mut t, &mut h, flat(10)), [] as [usize; 0], "{}", last(&t));
    assert!(last(&t).contains("pool_size is 10, not the 6"), "{}", last(&t));
    assert!(t.log().iter().all(|d| d.action != Action::StepBack), "{:#?}", t.log());

    // The tuner's own resize was refused: the size did not change, so nothing is judged or
    // capped, and the tuner tries again once the windows agree again.
    let (mut t, mut h) = (eager_tuner(1), BTreeMap::new());
    assert_eq!(next(&mut t, &mut h, flat(4)), [6]);
    assert_eq!(next(&mut t, &mut h, flat(4)), [] as [usize; 0]);
    assert!(last(&t).contains("pool_size is 4, not the 6"), "{}", last(&t));
    assert_eq!(next(&mut t, &mut h, flat(4)), [] as [usize; 0], "cooldown");
    assert_eq!(next(&mut t, &mut h, flat(4)), [6], "tries again, uncapped");
}

#[test]
fn a_cap_lasts_cap_windows_then_the_step_is_tried_again() {
    let mut t = eager_tuner_with(TunerSettings {
        agree: 1,
        cooldown: 1,
        cap_windows: 3,
        ..TunerSettings::default()
    });
    let mut h = BTreeMap::new();
    let flat = |size| window(size, 1000, 0);
    assert_eq!(next(&mut t, &mut h, flat(4)), [6]);
    assert_eq!(next(&mut t, &mut h, flat(6)), [4]);
    assert_eq!(next(&mut t, &mut h, flat(4)), [] as [usize; 0], "cooldown");
    // The cap counts the windows from the step back, the cooldown's included.
    for _ in 0..2 {
        assert_eq!(next(&mut t, &mut h, flat(4)), [] as [usize; 0], "capped");
    }
    assert_eq!(next(&mut t, &mut h, flat(4)), [6], "{:#?}", t.log());
}

#[test]
fn a_shrink_never_grows_a_pool_below_min_pool_size() {
    let mut t = eager_tuner_with(TunerSettings {
        agree: 1,
        cooldown: 1,
        min_pool_size: 8,
        ..TunerSettings::default()
    });
    let mut h = BTreeMap::new();
    // 10 checkouts/s of 100 ms: one connection busy, most of the four idle.
    let idle = Window { wait_p90: Duration::ZERO, ..window(4, 100, 0) };
    assert_eq!(next(&mut t, &mut h, idle), [] as [usize; 0], "{:#?}", t.log());
    let d = t.log().last().unwrap();
    assert_eq!((d.action, d.to), (Action::Hold, 4), "{d}");
    assert!(d.reason.contains("but min_pool_size is 8"), "{d}");
}

#[test]
fn decisions_since_a_mark_survive_the_log_being_trimmed() {
    // Never agreeing enough to act: every window is logged as a hold.
    let mut t = eager_tuner(usize::MAX);
    let mut h = BTreeMap::new();
    let mut seen = 0;
    for i in 0..25_000u64 {
        let mark = t.decided();
        next(&mut t, &mut h, Window { seq: i + 1, ..window(4, 1000, 0) });
        let new = t.decisions_since(mark);
        assert_eq!(new.len(), 1, "one decision per window, at {i}");
        assert_eq!(new[0].window, i as usize + 1);
        seen += new.len();
        h.get_mut("p").unwrap().clear();
    }
    assert_eq!(seen, 25_000);
    assert_eq!(t.decided(), 25_000);
    assert!(t.log().len() < 25_000, "the log was trimmed");
    // A mark from before the trim gets what the log still keeps, newest last.
    let since_start = t.decisions_since(0);
    assert_eq!(since_start.len(), t.log().len());
    assert_eq!(since_start.last().map(|d| d.window), Some(25_000));
}

/// A tuner that acts on one window and judges a step up after one window, and an analysis
/// that speaks from one window.
fn eager_tuner(agree: usize) -> AutoTuner {
    eager_tuner_with(TunerSettings { agree, cooldown: 1, ..TunerSettings::default() })
}

/// A tuner with these settings over an analysis that speaks from one window.
fn eager_tuner_with(settings: TunerSettings) -> AutoTuner {
    AutoTuner::new(settings, Settings { min_windows: 1, ..Settings::default() }, Vec::new())
}

/// A 10 s window of pool `p` with `size` connections, `checkouts` checkouts (each connection
/// given back), `timeouts` timeouts and a p90 wait of 100 ms when anything was checked out.
fn window(size: usize, checkouts: u64, timeouts: u64) -> Window {
    Window {
        pool: "p".to_owned(),
        duration: Duration::from_secs(10),
        pool_size: size,
        checkouts,
        releases: checkouts,
        hold_mean: Duration::from_millis(100),
        wait_p90: if checkouts > 0 { Duration::from_millis(100) } else { Duration::ZERO },
        timeouts,
        open: size,
        ..Window::default()
    }
}

#[test]
fn a_stalled_pool_is_not_grown() {
    let mut tuner = eager_tuner(1);
    // Every connection stuck: callers time out, nothing is checked out or given back.
    let stalled = Window { hold_mean: Duration::ZERO, ..window(4, 0, 20) };
    let mut history = BTreeMap::from([("p".to_owned(), vec![stalled.clone()])]);
    for _ in 0..3 {
        assert_eq!(tuner.decide(&history), vec![], "{:#?}", tuner.log());
        history.get_mut("p").unwrap().push(stalled.clone());
    }
    assert_eq!(tuner.log().len(), 3);
    for d in tuner.log() {
        assert_eq!(d.action, Action::Hold, "{d}");
        assert!(d.reason.starts_with("Connections not coming back"), "{d}");
    }
}

#[test]
fn a_step_up_followed_by_no_throughput_did_not_pay_off() {
    // (window the tuner grows on, window after the step up, actions logged)
    let cases = [
        // Timeouts without checkouts before and after (connections checked out earlier do
        // come back, so the analysis does not freeze): zero to zero is no gain.
        (
            Window { releases: 3, ..window(4, 0, 5) },
            Window { releases: 3, ..window(5, 0, 5) },
            vec![Action::Grow, Action::StepBack],
        ),
        // A stall right after the step up: a window without checkouts measured no wait, so
        // its p90 of 0 is not a cut in waits.
        (window(4, 1000, 5), window(6, 0, 5), vec![Action::Grow, Action::StepBack]),
        // Throughput up after the step: kept.
        (window(4, 1000, 5), window(6, 1200, 0), vec![Action::Grow, Action::Hold]),
    ];
    for (before, after, expected) in cases {
        let mut tuner = eager_tuner(1);
        let mut history = BTreeMap::from([("p".to_owned(), vec![before.clone()])]);
        tuner.decide(&history);
        history.get_mut("p").unwrap().push(after.clone());
        tuner.decide(&history);
        let actions: Vec<Action> = tuner.log().iter().map(|d| d.action).collect();
        assert_eq!(actions, expected, "{before:?} then {after:?}: {:#?}", tuner.log());
    }
}

#[test]
fn a_window_already_decided_on_is_not_evidence_again() {
    let mut tuner = eager_tuner(2);
    let first = Window { seq: 1, ..window(4, 1000, 5) };
    let mut history = BTreeMap::from([("p".to_owned(), vec![first])]);
    assert_eq!(tuner.decide(&history), vec![]);
    assert_eq!(tuner.log().len(), 1, "{:#?}", tuner.log());
    // No new window (the sampler took none, e.g. after a stats reset): nothing changes.
    assert_eq!(tuner.decide(&history), vec![]);
    assert_eq!(tuner.log().len(), 1, "{:#?}", tuner.log());
    // The next sampled window is the second that agrees.
    history.get_mut("p").unwrap().push(Window { seq: 2, ..window(4, 1000, 5) });
    assert_eq!(
        tuner.decide(&history),
        vec![Change { pool: "p".to_owned(), pool_size: 6, max_overflow: 0 }]
    );
    assert_eq!(tuner.log()[1].window, 2, "{}", tuner.log()[1]);
}

#[test]
fn every_resize_is_traced_with_its_reason_and_evidence() {
    let (out, log) = pool_core::testing::LogCapture::start(tracing::Level::INFO);
    let (sizes, tuner) = converge(2, 40, 1);
    drop(log);
    let grows: Vec<&Decision> = tuner.log().iter().filter(|d| d.action == Action::Grow).collect();
    assert!(!grows.is_empty(), "the pool grew: {sizes:?}");
    let text = out.take();
    let traced: Vec<&str> =
        text.lines().filter(|l| l.contains("auto-tuner decision") && l.contains("Grow")).collect();
    assert_eq!(traced.len(), grows.len(), "one line per grow:\n{text}");
    for (line, d) in traced.iter().zip(&grows) {
        let e = d.evidence.as_ref().expect("a grow follows a recommendation");
        assert!(line.contains(&format!("from={} to={}", d.from, d.to)), "{line}");
        assert!(
            line.contains(&format!("needed {}", e.needed)),
            "the evidence is in the line: {line}"
        );
        assert!(d.to_string().contains(&e.to_string()), "and in the decision's Display: {d}");
    }
}

#[test]
fn no_grow_takes_the_room_of_connections_a_shrunk_neighbour_still_has_open() {
    // A shrunk neighbour, through the tuner: `a` (8 connections, all in use) was shrunk to 2 and still
    // has its 8 open; `b` (2) waits on a budget of 10 shared with `a`. No room for `b` until
    // a's connections come back.
    let budget = Budget {
        name: "shared".to_owned(),
        max_connections: 10,
        reserved: 0,
        pools: vec!["a".to_owned(), "b".to_owned()],
    };
    let mut tuner = AutoTuner::new(
        TunerSettings { agree: 1, cooldown: 1, ..TunerSettings::default() },
        Settings { min_windows: 1, ..Settings::default() },
        vec![budget],
    );
    let a = |pool_size, open: usize| Window {
        pool: "a".to_owned(),
        pool_size,
        open,
        overflow: open.saturating_sub(pool_size),
        wait_p90: Duration::ZERO,
        ..window(pool_size, 800, 0)
    };
    let b = |size| Window { pool: "b".to_owned(), timeouts: 5, ..window(size, 500, 0) };
    let mut history =
        BTreeMap::from([("a".to_owned(), vec![a(8, 8); 5]), ("b".to_owned(), vec![b(2); 5])]);
    let push = |history: &mut BTreeMap<String, Vec<Window>>, wa, wb| {
        history.get_mut("a").unwrap().push(wa);
        history.get_mut("b").unwrap().push(wb);
    };
    push(&mut history, a(2, 8), b(2));
    assert_eq!(tuner.decide(&history), vec![], "{:#?}", tuner.log());
    let last = tuner.log().last().unwrap().to_string();
    assert!(last.contains("b Hold 2 -> 2: Connection budget exhausted"), "{last}");
    push(&mut history, a(2, 8), b(2));
    assert_eq!(tuner.decide(&history), vec![], "still no room: {:#?}", tuner.log());
    // a's connections came back and closed: b grows into the room they left.
    push(&mut history, a(2, 2), b(2));
    assert_eq!(
        tuner.decide(&history),
        vec![Change { pool: "b".to_owned(), pool_size: 3, max_overflow: 0 }],
        "{:#?}",
        tuner.log()
    );
}
