//! The drainer's chain of handlers (`src/drainer.rs`) on a real Redis: its start (a wake-up
//! with nobody to hear it), a leader's handover (`handover.lua`) and the chain going idle
//! (`drain.lua`), each followed by the wake-up that must come next; and the alarms that wake
//! the drainers when nobody else will.

use crate::support::{Redis, app_key, app_prefix};
use std::time::Duration;
use task_core::keys::{ALARM_SECONDS, Keys, alarm_word, word};
use task_core::scripts::{Call, Drain, Header, Reply, Sweep, UnitScript, Wake, read_reply};

/// A Redis, the tick channel listened to (after `listen`), and the app's scripts run as its
/// calls do.
struct Chain {
    _redis: Redis,
    client: redis::Client,
    conn: redis::Connection,
    ticks: Option<redis::Connection>,
    tick_channel: String,
    header: [String; 6],
}

impl Chain {
    /// A Redis nobody listens to yet: no replica has subscribed.
    fn unheard() -> Chain {
        let redis = Redis::start();
        let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("redis url: {e}"));
        let conn = client.get_connection().unwrap_or_else(|e| panic!("connecting to redis: {e}"));
        let keys = Keys::new(app_prefix(), "task_log");
        let header = Header { keys: &keys, default_spec: "", history: 20, history_ms: 60_000 }.argv();
        Chain { _redis: redis, client, conn, ticks: None, tick_channel: keys.tick_channel(), header }
    }

    fn start() -> Chain {
        let mut chain = Chain::unheard();
        chain.listen();
        chain
    }

    /// Subscribes to the tick channel, as a replica's drainer trigger does.
    fn listen(&mut self) {
        let mut ticks = self.client.get_connection().unwrap_or_else(|e| panic!("connecting to redis: {e}"));
        // A raw SUBSCRIBE: `as_pubsub()` unsubscribes when its guard drops.
        let () = redis::cmd("SUBSCRIBE")
            .arg(&self.tick_channel)
            .exec(&mut ticks)
            .unwrap_or_else(|e| panic!("SUBSCRIBE: {e}"));
        ticks.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("timeout: {e}"));
        self.ticks = Some(ticks);
    }

    fn run<T: redis::FromRedisValue>(&mut self, call: &impl Call) -> T {
        redis::cmd("EVAL")
            .arg(&call.script().compiled().0)
            .arg(0)
            .arg(&self.header[..])
            .arg(call.args())
            .query(&mut self.conn)
            .unwrap_or_else(|e| panic!("EVAL: {e}"))
    }

    /// `GET /healthz`'s sweep: how its wake-up went.
    fn wake(&mut self) -> Wake {
        let sweep = Sweep { probe: true };
        let reply = Reply::Int(self.run(&sweep));
        read_reply(&sweep, &[reply]).unwrap_or_else(|e| panic!("sweep: {e:?}"))
    }

    fn command<T: redis::FromRedisValue>(&mut self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        cmd.arg(&args[1..]);
        cmd.query(&mut self.conn).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// The drainers' alarms: each key and its lifetime (s).
    fn alarms(&self) -> Vec<(String, i64)> {
        ALARM_SECONDS.iter().map(|&s| (app_key(&alarm_word(s)), i64::from(s))).collect()
    }

    /// The next tick's payload: a leader's token, or "" for a kick.
    fn tick(&mut self) -> String {
        let ticks = self.ticks.as_mut().unwrap_or_else(|| panic!("not listening"));
        let reply = ticks.recv_response().unwrap_or_else(|e| panic!("no tick: {e}"));
        let message = redis::Msg::from_owned_value(reply).unwrap_or_else(|| panic!("not a message"));
        message.get_payload::<String>().unwrap_or_else(|e| panic!("tick payload: {e}"))
    }
}

#[test]
fn a_handover_frees_only_the_callers_lease_and_ticks_with_its_token() {
    let mut chain = Chain::start();
    let lease = app_key(word::LEASE);
    let () = chain.command(&["SET", &lease, "a"]);
    let mut hand_over = |token: &str| {
        assert_eq!(chain.run::<i64>(&UnitScript::handover(token)), 0);
        assert_eq!(chain.tick(), token, "the tick after {token}'s handover");
        chain.command::<Option<String>>(&["GET", &lease])
    };
    // Another's lease stays; our own goes; with none, only the tick.
    assert_eq!(hand_over("b"), Some("a".to_string()));
    assert_eq!(hand_over("a"), None);
    assert_eq!(hand_over("a"), None);
}

/// A kick wakes the drainers at most once per 200 ms (a burst of admissions publishes one),
/// but once a drainer has found nothing to do and stopped the chain, the next task queued must
/// wake it at once, the throttle running or not. (It did not: with a backend answering in a
/// few ms the chain went idle within 200 ms of its kick, and the tasks queued next waited
/// for the next request.)
#[test]
fn a_chain_gone_idle_is_woken_by_the_next_task_at_once() {
    let mut chain = Chain::start();
    let due = app_key(word::DUE);
    // A lane filed as due whose queue is empty: what the drainer finds when it looks is
    // nothing to run. `GET /healthz` (sweep.lua) wakes the drainers as an admission does.
    let () = chain.command(&["ZADD", &due, "0", "ghost:mail"]);
    assert_eq!(chain.wake(), Wake::Heard, "tasks wait and nobody leads: a kick");
    assert_eq!(chain.tick(), "");
    // Hold the throttle open however slow this machine is: within it, no second kick (the
    // drainer woken by the first will look).
    let () = chain.command(&["PEXPIRE", &app_key(word::KICK), "60000"]);
    assert_eq!(chain.wake(), Wake::Quiet, "within the throttle, one kick is enough");

    let drain = Drain { token: "d1", handoff: "", lease_ttl_ms: 1_000, batch: 16, claim_limit: 16, outcomes: &[] };
    let reply: Vec<redis::Value> = chain.run(&drain);
    assert_eq!(reply.first(), Some(&redis::Value::BulkString(b"idle".to_vec())), "{reply:?}");
    assert_eq!(chain.command::<i64>(&["EXISTS", &app_key(word::LEASE)]), 0, "the chain stopped");

    let () = chain.command(&["ZADD", &due, "0", "ghost:mail"]);
    assert_eq!(chain.wake(), Wake::Heard, "the chain stopped: the next wake-up goes out at once");
    assert_eq!(chain.tick(), "");
}

/// Spin may serve HTTP before its Redis trigger has subscribed, so the first admissions' wake-up
/// can go out with no replica to hear it; it must not hold back the next one for the
/// throttle's 200 ms (a burst over by then would wait for another request).
#[test]
fn a_wake_up_nobody_heard_does_not_hold_back_the_next() {
    let mut chain = Chain::unheard();
    let kick = app_key(word::KICK);
    let () = chain.command(&["ZADD", &app_key(word::DUE), "0", "ghost:mail"]);
    assert_eq!(chain.wake(), Wake::Unheard, "tasks wait and nobody leads: a kick, unheard");
    assert_eq!(chain.command::<i64>(&["EXISTS", &kick]), 0, "nobody heard it: no throttle");
    // Should nobody call again, the alarms wake the replicas that have subscribed by then.
    for (key, ms) in chain.alarms() {
        assert!((ms * 1000 - 1000..=ms * 1000).contains(&chain.command::<i64>(&["PTTL", &key])), "{key}");
    }
    assert_eq!(chain.wake(), Wake::Unheard, "the next wake-up goes out at once");

    // Heard, it throttles the next as before.
    chain.listen();
    assert_eq!(chain.wake(), Wake::Heard);
    assert_eq!(chain.tick(), "");
    assert_eq!(chain.command::<i64>(&["EXISTS", &kick]), 1);
    assert_eq!(chain.wake(), Wake::Quiet, "within the throttle, one kick is enough");
}

/// A leader keeps the alarms from going off: it sets them when it takes the lease, renews
/// them once the shortest has run a second down (not on every call), and deletes them when
/// the chain goes idle, so that they go off only once every drainer has stopped.
#[test]
fn a_leader_keeps_the_alarms_off_and_an_idle_chain_deletes_them() {
    let mut chain = Chain::start();
    let due = app_key(word::DUE);
    let alarms = chain.alarms();
    let ttl = |chain: &mut Chain, key: &str| chain.command::<i64>(&["PTTL", key]);
    // Something due later keeps the chain active.
    let () = chain.command(&["ZADD", &due, "99999999999999", "later:mail"]);
    let drain = Drain { token: "d1", handoff: "", lease_ttl_ms: 1_000, batch: 16, claim_limit: 16, outcomes: &[] };
    let reply: Vec<redis::Value> = chain.run(&drain);
    assert_eq!(reply.first(), Some(&redis::Value::BulkString(b"active".to_vec())), "{reply:?}");
    for (key, s) in &alarms {
        let left = ttl(&mut chain, key);
        assert!((s * 1000 - 1000..=s * 1000).contains(&left), "{key}: {left} ms");
    }
    // With most of a second left on the shortest, a call leaves them be...
    let (short, short_s) = alarms[0].clone();
    let () = chain.command(&["PEXPIRE", &short, &(short_s * 1000 - 500).to_string()]);
    let _: Vec<redis::Value> = chain.run(&drain);
    assert!(ttl(&mut chain, &short) <= short_s * 1000 - 500, "renewed with time to spare");
    // ...and renews every one once it has run low.
    let () = chain.command(&["PEXPIRE", &short, "2000"]);
    let (long, long_s) = alarms[alarms.len() - 1].clone();
    let () = chain.command(&["PEXPIRE", &long, "2000"]);
    let _: Vec<redis::Value> = chain.run(&drain);
    assert!(ttl(&mut chain, &short) > 2_000 && ttl(&mut chain, &long) > (long_s - 1) * 1000, "renewed");

    let () = chain.command(&["ZREM", &due, "later:mail"]);
    let reply: Vec<redis::Value> = chain.run(&drain);
    assert_eq!(reply.first(), Some(&redis::Value::BulkString(b"idle".to_vec())), "{reply:?}");
    for (key, _) in &alarms {
        assert_eq!(ttl(&mut chain, key), -2, "{key} left after the chain went idle");
    }
}
