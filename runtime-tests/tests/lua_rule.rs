//! The slot rule runs in Lua inside Redis twice: the executor applies it to the user's
//! completion times (`earliest_start` in `src/scripts/lib.lua`), and the admission script
//! with the `redis` ledger to the user's recent slots (`src/scripts/admit.lua`). These tests
//! run the real Lua on a real redis-server against the real `slot.rs` (`slot::next_slot`,
//! which the `kv` ledger and the rate-limit fields use) on random histories and limits: they
//! must agree everywhere.

// The component crate is a cdylib for wasm, so its pure rule is compiled in here directly.
#[path = "../../src/slot.rs"]
#[allow(dead_code)]
mod slot;
#[path = "../../src/test_rng.rs"]
#[allow(dead_code)]
mod test_rng;
mod support;

use support::Redis;
use test_rng::XorShift;

const LIB: &str = include_str!("../../src/scripts/lib.lua");
const ADMIT: &str = include_str!("../../src/scripts/admit.lua");

/// 2,000 random cases: limits from 0 (window off) to 25, histories of 0–40 completion
/// times (longer than the rule looks at), task slots before, inside and after the windows.
#[test]
fn lua_earliest_start_agrees_with_slot_next_slot() {
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("redis url: {e}"));
    let mut conn = client.get_connection().unwrap_or_else(|e| panic!("connecting to redis: {e}"));
    let script = format!(
        "local lateness_buckets_ms = {{}}\n{LIB}\nreturn earliest_start(KEYS[1], tonumber(ARGV[8]))"
    );
    let mut rng = XorShift(0xA076_1D64_78BD_642F);
    let mut constrained = 0;
    for case in 0..2_000 {
        let limits = slot::Limits { per_second: rng.next(4) as u32, per_minute: rng.next(26) as u32 };
        let mut t = 1_700_000_000_000i64;
        let history: Vec<i64> = (0..rng.next(41))
            .map(|_| {
                t += rng.next(3_000) as i64;
                t
            })
            .collect();
        let task_slot = t - 60_000 + rng.next(62_000) as i64;
        let _: () = redis::cmd("DEL").arg("done").query(&mut conn).unwrap_or_else(|e| panic!("DEL: {e}"));
        if !history.is_empty() {
            let _: i64 = redis::cmd("RPUSH").arg("done").arg(&history).query(&mut conn).unwrap_or_else(|e| panic!("RPUSH: {e}"));
        }
        let lua: i64 = redis::cmd("EVAL")
            .arg(&script)
            .arg(1)
            .arg("done")
            .arg(&["taskq:", "task_log"][..])
            .arg(limits.per_second)
            .arg(limits.per_minute)
            .arg(&[86_400_000, slot::SECOND_MS, slot::MINUTE_MS][..])
            .arg(task_slot)
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("case {case}: EVAL: {e}"));
        let rust = slot::next_slot(limits, &history, task_slot);
        assert_eq!(lua, rust, "case {case}: limits {limits:?}, history {history:?}, slot {task_slot}");
        if rust > task_slot {
            constrained += 1;
        }
    }
    // The cases reach both outcomes: the rule delays some tasks and not others.
    assert!(constrained > 200 && constrained < 1_800, "{constrained} of 2000 cases were delayed");
}

/// 1,000 random admissions through the real `admit.lua`: limits from 0 to 25, ledgers of 0–40
/// recent slots around the Redis clock, with entries of the app's shape and of others. The slot it gives is `slot::next_slot` of the
/// ledger's slots at the arrival it reports, and the ledger it writes is the old one with the
/// new entry appended, the sequence number advanced, and only what the rule needs kept.
#[test]
fn admit_lua_gives_the_slot_of_slot_next_slot() {
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("redis url: {e}"));
    let mut conn = client.get_connection().unwrap_or_else(|e| panic!("connecting to redis: {e}"));
    let script = format!("local lateness_buckets_ms = {{}}\n{LIB}\n{ADMIT}");
    let mut rng = XorShift(0x94D0_49BB_1331_11EB);
    let mut constrained = 0;
    for case in 0..1_000 {
        let limits = slot::Limits { per_second: rng.next(4) as u32, per_minute: rng.next(26) as u32 };
        let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap_or_else(|e| panic!("FLUSHALL: {e}"));
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut conn).unwrap_or_else(|e| panic!("TIME: {e}"));
        let mut t = secs * 1_000 + micros / 1_000 - 62_000 + rng.next(4_000) as i64;
        let seq = rng.next(1_000) as u64;
        // Tags of the app's width (12 characters, read in place by the script), of another
        // width (read entry by entry), or mixed.
        let shape = case % 3;
        let entries: Vec<String> = (0..rng.next(41))
            .map(|i| {
                t += rng.next(3_000) as i64;
                let width = match shape {
                    0 => 12,
                    1 => 11,
                    _ => 11 + rng.next(3) as usize,
                };
                format!("{t}:{:0>width$}", format!("t{i}"))
            })
            .collect();
        let slots: Vec<i64> = entries.iter().map(|e| e.split(':').next().and_then(|s| s.parse().ok()).unwrap_or(0)).collect();
        if !entries.is_empty() {
            let stored = format!("v1 {} {}", seq + entries.len() as u64, entries.join(" "));
            let _: () = redis::cmd("SET").arg("taskq:ledger:u").arg(stored).query(&mut conn).unwrap_or_else(|e| panic!("SET: {e}"));
        }
        let reply: Vec<redis::Value> = redis::cmd("EVAL")
            .arg(&script)
            .arg(0)
            .arg(&["taskq:", "task_log"][..])
            .arg(limits.per_second)
            .arg(limits.per_minute)
            .arg(&[86_400_000, slot::SECOND_MS, slot::MINUTE_MS][..])
            .arg(&["u", "user u", "taskq:ledger:u", "", "0", "0123456789abcdef01234567", "0123456789ab", ""][..])
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
        assert_eq!(text(0), "admitted", "case {case}");
        let (slot, now) = (int(1), int(4));
        let rust = slot::next_slot(limits, &slots, now);
        assert_eq!(slot, rust, "case {case}: limits {limits:?}, ledger {slots:?}, arrival {now}");
        let keep = limits.history().max(1);
        let mut expected: Vec<String> = entries.iter().skip((entries.len() + 1).saturating_sub(keep)).cloned().collect();
        expected.push(format!("{slot}:0123456789ab"));
        let written = format!("v1 {} {}", seq + entries.len() as u64 + 1, expected.join(" "));
        let written = if entries.is_empty() { format!("v1 1 {slot}:0123456789ab") } else { written };
        assert_eq!(text(2), written, "case {case}: limits {limits:?}");
        let stored: String = redis::cmd("GET").arg("taskq:ledger:u").query(&mut conn).unwrap_or_else(|e| panic!("GET: {e}"));
        assert_eq!(stored, written, "case {case}");
        if rust > now {
            constrained += 1;
        }
    }
    assert!(constrained > 100 && constrained < 900, "{constrained} of 1000 admissions were delayed");
}
