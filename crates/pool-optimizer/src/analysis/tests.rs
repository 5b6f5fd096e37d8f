//! Table-driven scenarios of the analysis, with their recommendations as snapshots.

use std::collections::BTreeMap;
use std::time::Duration;

use expect_test::{Expect, expect};

use super::*;

/// A window of 10 s: `rate` checkouts/s held `hold_ms`, p90 wait `wait_ms`; as many
/// connections came back as were checked out.
fn w(pool_size: usize, rate: f64, hold_ms: f64, wait_ms: f64) -> Window {
    let hold = Duration::from_secs_f64(hold_ms / 1e3);
    let wait = Duration::from_secs_f64(wait_ms / 1e3);
    let checkouts = (rate * 10.0) as u64;
    Window {
        pool: "main".to_owned(),
        duration: Duration::from_secs(10),
        pool_size,
        max_overflow: 5,
        checkouts,
        releases: checkouts,
        hold_mean: hold,
        hold_p90: hold * 2,
        wait_mean: wait / 2,
        wait_p50: wait / 4,
        wait_p90: wait,
        wait_p99: wait * 2,
        open: pool_size,
        ..Window::default()
    }
}

/// Analyzes `windows` (grouped by pool) with the default settings, checks the recommendations
/// against `expected` and returns them.
fn check(windows: Vec<Window>, budgets: &[Budget], expected: Expect) -> Vec<Recommendation> {
    let mut all = BTreeMap::new();
    for window in windows {
        all.entry(window.pool.clone()).or_insert_with(Vec::new).push(window);
    }
    let recs = analyze(&all, &Settings::default(), budgets);
    let text: Vec<String> = recs.iter().map(ToString::to_string).collect();
    expected.assert_eq(&text.join("\n"));
    recs
}

#[test]
fn beta_and_needed_follow_square_root_staffing() {
    assert!((beta_for(0.05) - 1.73).abs() < 0.02, "{}", beta_for(0.05));
    assert!((beta_for(0.2) - 1.06).abs() < 0.02, "{}", beta_for(0.2));
    assert_eq!(needed(10.0, beta_for(0.05)), 16);
    assert_eq!(needed(0.0, 1.7), 1);
    assert_eq!(needed(100.0, beta_for(0.05)), 118);
}

#[test]
fn steady_load_on_a_right_sized_pool_needs_nothing() {
    check(vec![w(16, 200.0, 50.0, 0.0); 6], &[], expect![[""]]);
}

#[test]
fn too_few_windows_say_nothing() {
    check(vec![w(2, 600.0, 50.0, 500.0); 2], &[], expect![[""]]);
}

#[test]
fn a_spike_with_flat_hold_time_grows_the_pool() {
    let mut ws = vec![w(16, 200.0, 50.0, 0.0); 3];
    ws.extend([
        w(16, 320.0, 50.0, 40.0),
        w(16, 320.0, 50.0, 60.0),
        Window { timeouts: 3, ..w(16, 320.0, 50.0, 80.0) },
    ]);
    check(
        ws,
        &[],
        expect![[
            r#"[high] main: High wait times: Increase pool_size to 23 (pool_size 16 + 5; busy 16.0 connections on average in the busiest window (Little's law: 320.0/s × 50.0 ms), needed 23; over 6 windows: 260 checkouts/s, mean hold 50.0 ms, wait p90 80.0 ms, timeouts 3, idle 0%, overflow in 0% of windows, hold ×1.00, load ×1.60, connect errors 0)"#
        ]],
    );
}

/// Hold time rising while callers wait: with load rising too, or at flat load, the signature
/// of a pool grown onto a saturated database (the same throughput, slower queries). Growing
/// again would only slow every query further.
#[test]
fn hold_time_rising_means_the_database_is_saturated_whether_load_rose_or_not() {
    let windows = |rates: [f64; 6]| -> Vec<Window> {
        let holds = [50.0, 55.0, 60.0, 75.0, 80.0, 85.0];
        let waits = [0.0, 0.0, 5.0, 30.0, 50.0, 70.0];
        (0..6).map(|i| w(20, rates[i], holds[i], waits[i])).collect()
    };
    check(
        windows([200.0, 210.0, 220.0, 260.0, 270.0, 280.0]),
        &[],
        expect![[
            r#"[high] main: Database saturated: Do not add connections: hold time rose 1.5x (load 1.3x), so the database, not the pool, is the bottleneck; look for slow queries and lock waits (pool_size 20 + 5; busy 23.8 connections on average in the busiest window (Little's law: 280.0/s × 85.0 ms), needed 33; over 6 windows: 240 checkouts/s, mean hold 69.2 ms, wait p90 70.0 ms, timeouts 0, idle 0%, overflow in 0% of windows, hold ×1.45, load ×1.29, connect errors 0)"#
        ]],
    );
    check(
        windows([250.0; 6]),
        &[],
        expect![[
            r#"[high] main: Database saturated: Do not add connections: hold time rose 1.5x (load 1.0x), so the database, not the pool, is the bottleneck; look for slow queries and lock waits (pool_size 20 + 5; busy 21.2 connections on average in the busiest window (Little's law: 250.0/s × 85.0 ms), needed 30; over 6 windows: 250 checkouts/s, mean hold 67.5 ms, wait p90 70.0 ms, timeouts 0, idle 0%, overflow in 0% of windows, hold ×1.45, load ×1.00, connect errors 0)"#
        ]],
    );
}

#[test]
fn an_over_provisioned_pool_shrinks_to_what_the_load_needs() {
    check(
        vec![w(50, 100.0, 20.0, 0.0); 6],
        &[],
        expect![[
            r#"[low] main: Too many idle connections: Decrease pool_size to 5 (pool_size 50 + 5; busy 2.0 connections on average in the busiest window (Little's law: 100.0/s × 20.0 ms), needed 5; over 6 windows: 100 checkouts/s, mean hold 20.0 ms, wait p90 0.0 ms, timeouts 0, idle 96%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)"#
        ]],
    );
}

#[test]
fn connect_errors_raise_an_alert_and_freeze_sizing() {
    let mut ws = vec![w(2, 600.0, 50.0, 500.0); 5];
    ws.push(Window { connect_errors: 4, ..w(2, 600.0, 50.0, 500.0) });
    check(
        ws,
        &[],
        expect![[
            r#"[high] main: Connection errors: Check the database and the network: 4 connect errors in the last 6 windows; sizing is frozen until they stop (pool_size 2 + 5; busy 30.0 connections on average in the busiest window (Little's law: 600.0/s × 50.0 ms), needed 40; over 6 windows: 600 checkouts/s, mean hold 50.0 ms, wait p90 500.0 ms, timeouts 0, idle 0%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 4)"#
        ]],
    );
}

#[test]
fn overflow_in_use_most_of_the_time_means_pool_size_is_too_small() {
    let ws = vec![Window { overflow: 4, open: 14, ..w(10, 140.0, 50.0, 1.0) }; 6];
    check(
        ws,
        &[],
        expect![[
            r#"[medium] main: Overflow used most of the time: Increase pool_size to 14 (pool_size 10 + 5; busy 7.0 connections on average in the busiest window (Little's law: 140.0/s × 50.0 ms), needed 12; over 6 windows: 140 checkouts/s, mean hold 50.0 ms, wait p90 1.0 ms, timeouts 0, idle 50%, overflow in 100% of windows, hold ×1.00, load ×1.00, connect errors 0)"#
        ]],
    );
}

#[test]
fn no_proposal_breaks_the_connection_budget() {
    let mut ws = vec![w(16, 600.0, 50.0, 200.0); 6];
    ws.extend(vec![Window { pool: "other".to_owned(), ..w(10, 10.0, 10.0, 0.0) }; 6]);
    let budget = Budget {
        name: "primary".to_owned(),
        max_connections: 50,
        reserved: 5,
        pools: vec!["main".to_owned(), "other".to_owned()],
    };
    check(
        ws,
        &[budget],
        expect![[r#"
            [high] main: Connection budget exhausted: pool_size can grow only to 25: primary allows 45 connections (50 max_connections, 5 reserved) and its other pools have or may open 15 (pool_size 16 + 5; busy 30.0 connections on average in the busiest window (Little's law: 600.0/s × 50.0 ms), needed 40; over 6 windows: 600 checkouts/s, mean hold 50.0 ms, wait p90 200.0 ms, timeouts 0, idle 0%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)
            [medium] main: High wait times: Increase pool_size to 25 (pool_size 16 + 5; busy 30.0 connections on average in the busiest window (Little's law: 600.0/s × 50.0 ms), needed 40; over 6 windows: 600 checkouts/s, mean hold 50.0 ms, wait p90 200.0 ms, timeouts 0, idle 0%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)
            [low] other: Too many idle connections: Decrease pool_size to 1 (pool_size 10 + 5; busy 0.1 connections on average in the busiest window (Little's law: 10.0/s × 10.0 ms), needed 1; over 6 windows: 10 checkouts/s, mean hold 10.0 ms, wait p90 0.0 ms, timeouts 0, idle 99%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)"#]],
    );
}

#[test]
fn the_grows_of_one_call_fit_the_budget_together() {
    // Two pools of 10 + 5 on a 50-connection budget, each needing 40: the first (by name)
    // takes the room there is, the second is told it cannot grow. Proposed together, they fit.
    let busy = |pool: &str| Window { pool: pool.to_owned(), ..w(10, 600.0, 50.0, 200.0) };
    let mut ws = vec![busy("a"); 6];
    ws.extend(vec![busy("b"); 6]);
    let budget = Budget {
        name: "primary".to_owned(),
        max_connections: 50,
        reserved: 0,
        pools: vec!["a".to_owned(), "b".to_owned()],
    };
    let recs = check(
        ws,
        &[budget],
        expect![[r#"
            [high] a: Connection budget exhausted: pool_size can grow only to 30: primary allows 50 connections (50 max_connections, 0 reserved) and its other pools have or may open 15 (pool_size 10 + 5; busy 30.0 connections on average in the busiest window (Little's law: 600.0/s × 50.0 ms), needed 40; over 6 windows: 600 checkouts/s, mean hold 50.0 ms, wait p90 200.0 ms, timeouts 0, idle 0%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)
            [medium] a: High wait times: Increase pool_size to 30 (pool_size 10 + 5; busy 30.0 connections on average in the busiest window (Little's law: 600.0/s × 50.0 ms), needed 40; over 6 windows: 600 checkouts/s, mean hold 50.0 ms, wait p90 200.0 ms, timeouts 0, idle 0%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)
            [high] b: Connection budget exhausted: pool_size cannot grow: primary allows 50 connections (50 max_connections, 0 reserved) and its other pools have or may open 35, and this pool's max_overflow takes 5 (pool_size 10 + 5; busy 30.0 connections on average in the busiest window (Little's law: 600.0/s × 50.0 ms), needed 40; over 6 windows: 600 checkouts/s, mean hold 50.0 ms, wait p90 200.0 ms, timeouts 0, idle 0%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)"#]],
    );
    let total: usize = ["a", "b"]
        .iter()
        .map(|p| {
            let proposed = recs.iter().find_map(|r| (r.pool == *p).then_some(r.proposed).flatten());
            proposed.map_or(10, |s| s.pool_size) + 5
        })
        .sum();
    assert!(total <= 50, "{total}: {recs:#?}");
}

#[test]
fn a_budget_never_takes_a_shrink_below_what_the_load_needs() {
    // An idle pool that needs 12 on a budget its neighbour overfills: it shrinks to 12, no
    // lower, and no budget message calls that a grow.
    let mut ws = vec![Window { pool: "idle".to_owned(), ..w(30, 140.0, 50.0, 0.0) }; 6];
    ws.extend(vec![Window { pool: "full".to_owned(), ..w(40, 10.0, 10.0, 0.0) }; 6]);
    let budget = Budget {
        name: "primary".to_owned(),
        max_connections: 40,
        reserved: 0,
        pools: vec!["idle".to_owned(), "full".to_owned()],
    };
    check(
        ws,
        &[budget],
        expect![[r#"
            [low] full: Too many idle connections: Decrease pool_size to 1 (pool_size 40 + 5; busy 0.1 connections on average in the busiest window (Little's law: 10.0/s × 10.0 ms), needed 1; over 6 windows: 10 checkouts/s, mean hold 10.0 ms, wait p90 0.0 ms, timeouts 0, idle 100%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)
            [low] idle: Too many idle connections: Decrease pool_size to 12 (pool_size 30 + 5; busy 7.0 connections on average in the busiest window (Little's law: 140.0/s × 50.0 ms), needed 12; over 6 windows: 140 checkouts/s, mean hold 50.0 ms, wait p90 0.0 ms, timeouts 0, idle 77%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)"#]],
    );
}

#[test]
fn windows_built_by_hand_with_extreme_values_do_not_panic_or_propose_nonsense() {
    let empty = Window { pool: "p".to_owned(), ..Window::default() };
    assert_eq!(empty.rate(), 0.0);
    let huge = Window { hold_mean: Duration::MAX, checkouts: 3, ..w(4, 1.0, 1.0, 0.0) };
    let recs = check(vec![huge.clone(); 3], &[], expect![[r#""#]]);
    assert!(recs.iter().all(|r| r.proposed.is_none_or(|s| s.pool_size < 1_000_000)), "{recs:#?}");
    let huge = Window { in_use_time: Some(Duration::MAX), checkouts: 1, ..huge };
    let recs = check(vec![huge; 3], &[], expect![[r#""#]]);
    assert!(recs.iter().all(|r| r.proposed.is_none_or(|s| s.pool_size < 1_000_000)), "{recs:#?}");
    check(vec![empty; 3], &[], expect![[""]]);
}

#[test]
fn a_grow_the_budget_cannot_fit_never_shrinks_the_pool() {
    // `main` waits and times out, but its budget is already spent by its own max_overflow:
    // 22 − 20 leaves room for 2, fewer than the 10 it has. `spill` uses its overflow all the
    // time and sits exactly at its budget (10 + 5 of 15).
    let mut ws = vec![Window { max_overflow: 20, timeouts: 2, ..w(10, 600.0, 50.0, 200.0) }; 6];
    ws.extend(vec![
        Window {
            pool: "spill".to_owned(),
            overflow: 4,
            open: 14,
            ..w(10, 140.0, 50.0, 1.0)
        };
        6
    ]);
    let budget = |name: &str, max_connections, pool: &str| Budget {
        name: name.to_owned(),
        max_connections,
        reserved: 0,
        pools: vec![pool.to_owned()],
    };
    let recs = check(
        ws,
        &[budget("primary", 22, "main"), budget("replica-1", 15, "spill")],
        expect![[r#"
            [high] main: Connection budget exhausted: pool_size cannot grow: primary allows 22 connections (22 max_connections, 0 reserved) and its other pools have or may open 0, and this pool's max_overflow takes 20 (pool_size 10 + 20; busy 30.0 connections on average in the busiest window (Little's law: 600.0/s × 50.0 ms), needed 40; over 6 windows: 600 checkouts/s, mean hold 50.0 ms, wait p90 200.0 ms, timeouts 12, idle 0%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)
            [high] spill: Connection budget exhausted: pool_size cannot grow: replica-1 allows 15 connections (15 max_connections, 0 reserved) and its other pools have or may open 0, and this pool's max_overflow takes 5 (pool_size 10 + 5; busy 7.0 connections on average in the busiest window (Little's law: 140.0/s × 50.0 ms), needed 12; over 6 windows: 140 checkouts/s, mean hold 50.0 ms, wait p90 1.0 ms, timeouts 0, idle 50%, overflow in 100% of windows, hold ×1.00, load ×1.00, connect errors 0)"#]],
    );
    assert!(
        recs.iter().all(|r| r.proposed.is_none() && !r.suggestion.contains("Decrease")),
        "{recs:#?}"
    );
}

#[test]
fn connections_not_coming_back_freeze_sizing_instead_of_growing() {
    // Normal traffic, then every connection stuck behind a lock: nothing checked out or given
    // back, callers time out, and the window's hold time reads 0.
    let mut ws = vec![w(10, 150.0, 50.0, 0.0); 5];
    ws.push(Window { timeouts: 12, ..w(10, 0.0, 0.0, 0.0) });
    let recs = check(
        ws,
        &[],
        expect![[
            r#"[high] main: Connections not coming back: Look for stuck work: no connection came back in the last window while callers waited (12 timeouts, wait p90 0.0 ms), so the connections are held by stuck work (lock waits, long transactions, a hung server) and more connections would not help; sizing is frozen until connections come back (pool_size 10 + 5; busy 7.5 connections on average in the busiest window (Little's law: 150.0/s × 50.0 ms), needed 13; over 6 windows: 125 checkouts/s, mean hold 50.0 ms, wait p90 0.0 ms, timeouts 12, idle 25%, overflow in 0% of windows, hold ×0.67, load ×0.67, connect errors 0)"#
        ]],
    );
    assert!(recs.iter().all(|r| r.proposed.is_none()), "{recs:#?}");
}

#[test]
fn a_pool_without_traffic_keeps_its_size() {
    // Overnight: no checkouts at all, so no evidence of what the load needs.
    let recs = check(vec![w(10, 0.0, 0.0, 0.0); 6], &[], expect![[""]]);
    assert!(recs.is_empty(), "{recs:#?}");
    // One quiet window among busy ones is enough to hold off the shrink.
    let mut ws = vec![w(50, 100.0, 20.0, 0.0); 5];
    ws.push(w(50, 0.0, 0.0, 0.0));
    let recs = check(ws, &[], expect![[""]]);
    assert!(recs.is_empty(), "{recs:#?}");
}

#[test]
fn a_budget_counts_the_connections_a_shrunk_pool_still_has_open() {
    // `a` (8 connections, all in use) was shrunk to 2; a shrink never closes a connection
    // under its user, so the server still has 8 of a's. `b` (2, waiting) needs 9.
    // A budget of 10 leaves `b` room for 10 − 8 = 2 connections, not 10 − 2 = 8.
    let shrunk = |open: usize| {
        let a = |pool_size| Window {
            pool: "a".to_owned(),
            max_overflow: 0,
            open: 8,
            ..w(pool_size, 160.0, 50.0, 0.0)
        };
        let mut ws = vec![a(8); 5];
        ws.push(Window { open, overflow: open.saturating_sub(2), ..a(2) });
        ws.extend(vec![
            Window {
                pool: "b".to_owned(),
                max_overflow: 0,
                timeouts: 1,
                ..w(2, 100.0, 50.0, 200.0)
            };
            6
        ]);
        ws
    };
    let budget = Budget {
        name: "shared".to_owned(),
        max_connections: 10,
        reserved: 0,
        pools: vec!["a".to_owned(), "b".to_owned()],
    };
    let recs = check(
        shrunk(8),
        std::slice::from_ref(&budget),
        expect![[
            r#"[high] b: Connection budget exhausted: pool_size cannot grow: shared allows 10 connections (10 max_connections, 0 reserved) and its other pools have or may open 8, and this pool's max_overflow takes 0 (pool_size 2 + 0; busy 5.0 connections on average in the busiest window (Little's law: 100.0/s × 50.0 ms), needed 9; over 6 windows: 100 checkouts/s, mean hold 50.0 ms, wait p90 200.0 ms, timeouts 6, idle 0%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)"#
        ]],
    );
    assert!(recs.iter().all(|r| r.proposed.is_none()), "{recs:#?}");
    // Once a's connections have come back and closed, b may take the room they left.
    let recs = check(
        shrunk(2),
        &[budget],
        expect![[r#"
        [high] b: Connection budget exhausted: pool_size can grow only to 8: shared allows 10 connections (10 max_connections, 0 reserved) and its other pools have or may open 2 (pool_size 2 + 0; busy 5.0 connections on average in the busiest window (Little's law: 100.0/s × 50.0 ms), needed 9; over 6 windows: 100 checkouts/s, mean hold 50.0 ms, wait p90 200.0 ms, timeouts 6, idle 0%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)
        [high] b: High wait times: Increase pool_size to 8 (pool_size 2 + 0; busy 5.0 connections on average in the busiest window (Little's law: 100.0/s × 50.0 ms), needed 9; over 6 windows: 100 checkouts/s, mean hold 50.0 ms, wait p90 200.0 ms, timeouts 6, idle 0%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)"#]],
    );
    let proposed = recs.iter().find_map(|r| r.proposed.filter(|_| r.pool == "b"));
    assert_eq!(proposed.map(|s| s.pool_size), Some(8), "{recs:#?}");
}

/// Windows of 10 s under a steady 260 checkouts/s held 50 ms (13 connections busy) on a
/// pool of 14 where callers wait, with the in-use time the sampler reads. With `outlier`, a
/// connection held for 30 minutes also came back halfway through window `returned`: it was in
/// use through every window before, and its 30 minutes are among the 2,600 holds that
/// window's mean hold is taken over (742 ms).
fn steady_load(outlier: Option<usize>) -> Vec<Window> {
    (0..6)
        .map(|i| {
            let steady = w(14, 260.0, 50.0, 40.0);
            let in_use = |long_hold_secs: u64| Some(Duration::from_secs(13 * 10 + long_hold_secs));
            match outlier {
                Some(returned) if i < returned => Window { in_use_time: in_use(10), ..steady },
                Some(returned) if i == returned => Window {
                    hold_mean: (steady.hold_mean * 2599 + Duration::from_secs(1800)) / 2600,
                    hold_p90: Duration::from_millis(100),
                    in_use_time: in_use(5),
                    ..steady
                },
                _ => Window { in_use_time: in_use(0), ..steady },
            }
        })
        .collect()
}

#[test]
fn one_long_hold_moves_the_advice_by_no_more_than_its_own_connection() {
    let recs = check(
        steady_load(None),
        &[],
        expect![[
            r#"[medium] main: High wait times: Increase pool_size to 20 (pool_size 14 + 5; busy 13.0 connections on average in the busiest window (130.0 connection-seconds in use in 10.0 s), needed 20; over 6 windows: 260 checkouts/s, mean hold 50.0 ms, wait p90 40.0 ms, timeouts 0, idle 7%, overflow in 0% of windows, hold ×1.00, load ×1.00, connect errors 0)"#
        ]],
    );
    let steady = recs[0].proposed.unwrap().pool_size;
    // Returned in the older half of the windows, then in the newer half, where its hold time
    // must not read as a saturating database either.
    for (returned, expected) in [
        (
            1,
            expect![[
                r#"[medium] main: High wait times: Increase pool_size to 21 (pool_size 14 + 5; busy 14.0 connections on average in the busiest window (140.0 connection-seconds in use in 10.0 s), needed 21; over 6 windows: 260 checkouts/s, mean hold 165.4 ms, wait p90 40.0 ms, timeouts 0, idle 0%, overflow in 0% of windows, hold ×0.96, load ×1.00, connect errors 0)"#
            ]],
        ),
        (
            4,
            expect![[
                r#"[medium] main: High wait times: Increase pool_size to 21 (pool_size 14 + 5; busy 14.0 connections on average in the busiest window (140.0 connection-seconds in use in 10.0 s), needed 21; over 6 windows: 260 checkouts/s, mean hold 165.4 ms, wait p90 40.0 ms, timeouts 0, idle 0%, overflow in 0% of windows, hold ×0.96, load ×1.00, connect errors 0)"#
            ]],
        ),
    ] {
        let recs = check(steady_load(Some(returned)), &[], expected);
        let proposed = recs.iter().find_map(|r| r.proposed).map(|s| s.pool_size);
        assert!(proposed.is_some_and(|n| n.abs_diff(steady) <= 1), "{recs:#?}");
    }
}
