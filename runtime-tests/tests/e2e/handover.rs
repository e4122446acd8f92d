//! `handover.lua` on a real Redis: a leader frees only a lease it still holds, and always
//! ticks with its token (the drainer's handover, `src/drainer.rs`).

use crate::support::Redis;
use std::time::Duration;
use task_core::keys::Keys;
use task_core::scripts::{Call, Header, UnitScript};

#[test]
fn a_handover_frees_only_the_callers_lease_and_ticks_with_its_token() {
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("redis url: {e}"));
    let mut conn = client.get_connection().unwrap_or_else(|e| panic!("connecting to redis: {e}"));
    let mut listener = client.get_connection().unwrap_or_else(|e| panic!("connecting to redis: {e}"));
    let keys = Keys::new("taskq:", "task_log");
    let lease = format!("taskq:{}", task_core::keys::word::LEASE);
    let mut ticks = listener.as_pubsub();
    ticks.subscribe(keys.tick_channel()).unwrap_or_else(|e| panic!("SUBSCRIBE: {e}"));
    ticks.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("timeout: {e}"));
    let header = Header { keys: &keys, default_spec: "", history: 20, history_ms: 60_000 }.argv();
    let _: () = redis::cmd("SET").arg(&lease).arg("a").query(&mut conn).unwrap_or_else(|e| panic!("SET: {e}"));
    let mut hand_over = |token: &str| {
        let call = UnitScript::handover(token);
        let _: i64 = redis::cmd("EVAL")
            .arg(&call.script().compiled().0)
            .arg(0)
            .arg(&header[..])
            .arg(call.args())
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("EVAL: {e}"));
        let tick = ticks.get_message().unwrap_or_else(|e| panic!("no tick after {token}'s handover: {e}"));
        assert_eq!(tick.get_payload::<String>().ok().as_deref(), Some(token));
        redis::cmd("GET").arg(&lease).query::<Option<String>>(&mut conn).unwrap_or_else(|e| panic!("GET: {e}"))
    };
    // Another's lease stays; our own goes; with none, only the tick.
    assert_eq!(hand_over("b"), Some("a".to_string()));
    assert_eq!(hand_over("a"), None);
    assert_eq!(hand_over("a"), None);
}
