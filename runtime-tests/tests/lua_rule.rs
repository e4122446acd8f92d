//! The executor applies the slot rule in Lua (`earliest_start` in `src/scripts/lib.lua`, on
//! the user's completion times) and admission applies it in Rust (`slot::next_slot`). This
//! test runs the real Lua on a real redis-server against the real `slot.rs` on random
//! histories and limits: the two must agree everywhere.

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
