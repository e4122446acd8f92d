//! The slot rule runs in Lua inside Redis twice: the executor applies it to a
//! lane's completion times (`earliest_start` in `src/scripts/lib.lua`), and the admission
//! script with the `redis` ledger to the lane's recent slots (`src/scripts/admit.lua`). These
//! tests run the real Lua on a real redis-server against the real `slot.rs`
//! (`slot::next_slot`, which the `kv` ledger and the rate-limit fields use) on random
//! policies, costs and histories: they must agree everywhere.

// The component crate is a cdylib for wasm, so its pure rule is compiled in here directly.
use crate::slot;
use crate::support;
use crate::test_rng;

use support::{Redis, app_key, app_prefix};
use task_core::keys::word;
use test_rng::XorShift;

const ADMIT: &str = include_str!("../../../core/src/scripts/admit.lua");

/// Window lengths the cases draw from: the default policy's two and others up to a day.
const LENGTHS: [i64; 6] = [1_000, 2_000, 10_000, 60_000, 3_600_000, 86_400_000];

/// A random policy of 0–3 windows (quotas 1–25), as `slot.rs` and as the scripts take it.
fn random_policy(rng: &mut XorShift) -> (Vec<slot::Window>, String) {
    let mut windows: Vec<slot::Window> = Vec::new();
    for _ in 0..rng.next(4) {
        let window_ms = LENGTHS[rng.next(LENGTHS.len() as u64) as usize];
        if windows.iter().all(|w| w.window_ms != window_ms) {
            windows.push(slot::Window { quota: 1 + rng.next(25) as u32, window_ms });
        }
    }
    let spec: Vec<String> = windows.iter().map(|w| format!("{}/{}", w.quota, w.window_ms)).collect();
    (windows, spec.join(","))
}

/// A cost the policy admits (1 to its smallest quota), mostly 1.
fn random_cost(rng: &mut XorShift, windows: &[slot::Window]) -> u32 {
    let most = windows.iter().map(|w| w.quota).min().unwrap_or(5);
    if rng.next(2) == 0 { 1 } else { 1 + rng.next(u64::from(most)) as u32 }
}

/// The shared header of every script (ARGV[1..6], `lib.lua`), as the app builds it: prefix,
/// log key, task TTL, default policy, history kept (entries, ms).
fn header(spec: &str) -> Vec<String> {
    let keys = task_core::keys::Keys::new(app_prefix(), "task_log");
    task_core::scripts::Header { keys: &keys, default_spec: spec, history: 25, history_ms: 86_400_000 }.argv().to_vec()
}

/// 2,000 random cases: policies of 0–3 windows from 1 s to 24 h, completion histories of
/// 0–40 entries (longer than the rule looks at) with costs, a task of a random cost, and its
/// slot before, inside and after the windows.
#[test]
fn lua_earliest_start_agrees_with_slot_next_slot() {
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("redis url: {e}"));
    let mut conn = client.get_connection().unwrap_or_else(|e| panic!("connecting to redis: {e}"));
    // lib.lua after what the app declares before it (key words, the default kind, buckets).
    let lib = task_core::scripts::prelude();
    let script = format!(
        "{lib}\nconfigure(ARGV)\nlocal windows = windows_of(ARGV[7])\n\
         return earliest_start(recent_completions(KEYS[1], windows), tonumber(ARGV[8]), windows, tonumber(ARGV[9]))"
    );
    let mut rng = XorShift(0xA076_1D64_78BD_642F);
    let mut constrained = 0;
    for case in 0..2_000 {
        let (windows, spec) = random_policy(&mut rng);
        let mut t = 1_700_000_000_000i64;
        let history: Vec<slot::Spent> = (0..rng.next(41))
            .map(|_| {
                t += rng.next(3_000) as i64;
                (t, random_cost(&mut rng, &windows))
            })
            .collect();
        let stored: Vec<String> =
            history.iter().map(|&(at, c)| if c == 1 { at.to_string() } else { format!("{at}*{c}") }).collect();
        let task_slot = t - 60_000 + rng.next(62_000) as i64;
        let cost = random_cost(&mut rng, &windows);
        let _: () = redis::cmd("DEL").arg("done").query(&mut conn).unwrap_or_else(|e| panic!("DEL: {e}"));
        if !stored.is_empty() {
            let _: i64 =
                redis::cmd("RPUSH").arg("done").arg(&stored).query(&mut conn).unwrap_or_else(|e| panic!("RPUSH: {e}"));
        }
        let lua: i64 = redis::cmd("EVAL")
            .arg(&script)
            .arg(1)
            .arg("done")
            .arg(header(""))
            .arg(&spec)
            .arg(task_slot)
            .arg(cost)
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("case {case}: EVAL: {e}"));
        let rust = slot::next_slot(&windows, &history, task_slot, cost);
        assert_eq!(lua, rust, "case {case}: windows {windows:?}, history {history:?}, slot {task_slot}, cost {cost}");
        if rust > task_slot.max(history.last().map_or(0, |h| h.0)) {
            constrained += 1;
        }
    }
    // The cases reach both outcomes: the windows delay some tasks and not others.
    assert!(constrained > 200 && constrained < 1_800, "{constrained} of 2000 cases were delayed by a window");
}

/// 1,000 random admissions through the real `admit.lua`: random policies and costs,
/// ledgers of 0–40 recent slots around the Redis clock, with entries of the app's shape (read
/// in place), of other widths and weighted (read entry by entry). The slot it gives is
/// `slot::next_slot` of the ledger at the arrival it reports, and the ledger it writes is the
/// old one with the new entry appended, the sequence number advanced, and only what the
/// lane's policies need kept. A cost over the smallest quota is refused, with nothing written.
#[test]
fn admit_lua_gives_the_slot_of_slot_next_slot() {
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("redis url: {e}"));
    let mut conn = client.get_connection().unwrap_or_else(|e| panic!("connecting to redis: {e}"));
    let lib = task_core::scripts::prelude();
    let script = format!("{lib}\nconfigure(ARGV)\n{ADMIT}");
    // User `u`'s ledger, which the script is given.
    let ledger = app_key(&format!("{}u", word::LEDGER));
    let mut rng = XorShift(0x94D0_49BB_1331_11EB);
    let (mut constrained, mut refused) = (0, 0);
    for case in 0..1_000 {
        let (windows, spec) = random_policy(&mut rng);
        let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap_or_else(|e| panic!("FLUSHALL: {e}"));
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut conn).unwrap_or_else(|e| panic!("TIME: {e}"));
        let mut t = secs * 1_000 + micros / 1_000 - 62_000 + rng.next(4_000) as i64;
        let seq = rng.next(1_000);
        // Tags of the app's width (12 characters) with unit costs (read in place by the
        // script), of another width, mixed, or weighted (read entry by entry).
        let shape = case % 4;
        let history: Vec<(String, slot::Spent)> = (0..rng.next(41))
            .map(|i| {
                t += rng.next(3_000) as i64;
                let width = match shape {
                    0 | 3 => 12,
                    1 => 11,
                    _ => 11 + rng.next(3) as usize,
                };
                let cost = if shape == 3 { random_cost(&mut rng, &windows) } else { 1 };
                let entry = format!("{t}:{:0>width$}", format!("t{i}"));
                (if cost == 1 { entry } else { format!("{entry}*{cost}") }, (t, cost))
            })
            .collect();
        let spent: Vec<slot::Spent> = history.iter().map(|(_, s)| *s).collect();
        let entries: Vec<String> = history.into_iter().map(|(e, _)| e).collect();
        let before = format!("v1 {} {}", seq + entries.len() as u64, entries.join(" "));
        if !entries.is_empty() {
            let _: () =
                redis::cmd("SET").arg(&ledger).arg(&before).query(&mut conn).unwrap_or_else(|e| panic!("SET: {e}"));
        }
        let most = windows.iter().map(|w| w.quota).min();
        let cost = match most {
            Some(most) if rng.next(10) == 0 => most + 1,
            _ => random_cost(&mut rng, &windows),
        };
        let keep = windows.iter().map(|w| w.quota).max().unwrap_or(0);
        let longest = windows.iter().map(|w| w.window_ms).max().unwrap_or(0);
        let (cost_arg, keep_arg, longest_arg) = (cost.to_string(), keep.to_string(), longest.to_string());
        let args = ["u", "user u", ledger.as_str(), "", "0", "0123456789abcdef01234567", "0123456789ab", ""];
        let reply: Vec<redis::Value> = redis::cmd("EVAL")
            .arg(&script)
            .arg(0)
            .arg(header(""))
            .arg(&args[..])
            .arg(&["default", &cost_arg, &keep_arg, &longest_arg, "", &spec, ""][..])
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("case {case}: EVAL: {e}"));
        let int = |i: usize| match reply.get(i) {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("case {case}: item {i} of {reply:?} is {other:?}"),
        };
        let text = |i: usize| match reply.get(i) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("case {case}: item {i} of {reply:?} is {other:?}"),
        };
        let mut stored = || -> Option<String> {
            redis::cmd("GET").arg(&ledger).query(&mut conn).unwrap_or_else(|e| panic!("GET: {e}"))
        };
        if most.is_some_and(|most| cost > most) {
            assert_eq!(text(0), "costly", "case {case}: cost {cost} under {windows:?}");
            assert_eq!(i64::from(most.unwrap_or(0)), int(2), "case {case}");
            assert_eq!(
                stored(),
                (!entries.is_empty()).then(|| before.clone()),
                "case {case}: a refused task wrote the ledger"
            );
            refused += 1;
            continue;
        }
        assert_eq!(text(0), "admitted", "case {case}");
        let (slot, now) = (int(1), int(5));
        let rust = slot::next_slot(&windows, &spent, now, cost);
        assert_eq!(slot, rust, "case {case}: windows {windows:?}, ledger {spent:?}, arrival {now}, cost {cost}");
        let kept = (keep as usize).max(1);
        let mut expected: Vec<String> =
            entries.iter().skip((entries.len() + 1).saturating_sub(kept)).cloned().collect();
        expected.push(if cost == 1 { format!("{slot}:0123456789ab") } else { format!("{slot}:0123456789ab*{cost}") });
        let written = format!("v1 {} {}", seq + entries.len() as u64 + 1, expected.join(" "));
        let written = if entries.is_empty() { format!("v1 1 {}", expected.join(" ")) } else { written };
        assert_eq!(text(2), written, "case {case}: windows {windows:?}");
        assert_eq!(stored().as_deref(), Some(written.as_str()), "case {case}");
        if rust > now.max(spent.last().map_or(0, |s| s.0)) {
            constrained += 1;
        }
    }
    assert!(
        constrained > 100 && refused > 30,
        "{constrained} of 1000 admissions were delayed by a window, {refused} refused"
    );
}
