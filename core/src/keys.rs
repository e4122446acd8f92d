//! Every Redis and key-value key the app writes, built in one place: the Rust side builds
//! them with `Keys`, and the Lua scripts from the same words (`word`), which `scripts`
//! declares before `lib.lua`.
//!
//! User ids are arbitrary strings (any byte sequence a JSON string allows), so they are
//! percent-encoded before they go into a key: bytes outside `[A-Za-z0-9._~-]` become `%XX`.
//! The encoding is injective and never produces `:`, `{`, `}`, `*` or whitespace, so a user
//! id can neither collide with another user's keys nor reach the app's own keys (which use
//! a fixed kind word followed by `:`), nor steer Redis Cluster hash slots.
//!
//! The keys (all under the `key_prefix`; `<u>` is the encoded user id and `<l>` a lane, the
//! user's tasks of one kind):
//! - `ledger:<l>` the lane's recent slots and costs (`ledger`), in Redis or the key-value
//!   store;
//! - `q:<l>`    list of the lane's pending tasks, `"<slot>:<task id>"`, in slot order;
//! - `due`      sorted set: lane → earliest instant its head task may start;
//! - `done:<l>` list of the lane's last starts: completion times, and delivery attempts' claims
//!   (`<ms>`, or `<ms>*<units>` for a weighted task; expires when the longest window has passed
//!   the last);
//! - `t:<id>`   hash of a task: `u` user id, `s` slot, `p` payload (JSON text, if any),
//!   `k` kind, `w` cost and `l` policy (each only when not the default), `c` completed-at,
//!   `x` cancelled-at or `f` failed-at (kept a day once one is set); for a kind with a target
//!   also `d` its delivery (`Delivery::spec`), `a` attempts claimed, `r` the start of the
//!   attempt in flight, `m` its lane, `o` while that attempt is one its admission started,
//!   `h` the attempts that ended (`read_task::attempts`);
//!   for a pulled kind also `t` the open claim's token and `y` the last outcome's detail;
//! - `idem:<u>:<key>` the task an Idempotency-Key names;
//! - `tier:<u>` the user's tier (absent: the built-in one);
//! - `lease`    the drainer lease; `kick` rate-limits wake-ups; `tick` is the drainers'
//!   channel; `alarm:<s>` (one per `ALARM_SECONDS`) expires `<s>` seconds after a leader last
//!   renewed it, and Redis's notification of that wakes the drainers (spin.toml);
//! - `metrics`  hash of the counters behind `/metrics`;
//! - `claims`   sorted set of the delivery attempts in flight (task id, scored by the instant
//!   its claim lapses), `inflight` hash of how many each lane has (lane → count), and
//!   `started` how many of them admissions started (their records marked `o`);
//! - `pull:<kind>` sorted set of a pulled kind's lanes (lane → earliest instant its head task
//!   may start), which workers claim from instead of `due`, and `bell:<kind>` the list a
//!   worker's long poll waits on (`BLPOP`): pushed when that set's soonest instant changes;
//! - `apikey:<id>` hash of an API key (`u` user id, `h` SHA-256 of the key, `c` created-at,
//!   `s` the user's set, `k` a worker key's kinds) and `apikeys:<u>` the set of a user's key
//!   ids (`workerkeys` the worker keys').

/// The words that follow the prefix in each kind of key.
pub mod word {
    pub const LEDGER: &str = "ledger:";
    pub const QUEUE: &str = "q:";
    pub const DUE: &str = "due";
    pub const DONE: &str = "done:";
    pub const TASK: &str = "t:";
    pub const IDEMPOTENCY: &str = "idem:";
    pub const TIER: &str = "tier:";
    pub const LEASE: &str = "lease";
    pub const KICK: &str = "kick";
    pub const ALARM: &str = "alarm:";
    pub const TICK: &str = "tick";
    pub const METRICS: &str = "metrics";
    pub const API_KEY: &str = "apikey:";
    pub const USER_API_KEYS: &str = "apikeys:";
    pub const CLAIMS: &str = "claims";
    pub const IN_FLIGHT: &str = "inflight";
    pub const STARTED: &str = "started";
    pub const PULL: &str = "pull:";
    pub const BELL: &str = "bell:";
    pub const WORKER_KEYS: &str = "workerkeys";
}

/// The drainers' alarms, in seconds (a key `alarm:<s>` each, and a trigger on its keyspace
/// channel in spin.toml). Spin has no timer trigger, and a tick chain dies with its replicas:
/// when every replica stopped with work left, the chain's alarms go off that long after the
/// last leader renewed them and wake whichever replicas are back by then, with no request.
/// Staggered, so that replicas back within a few seconds resume in a few seconds, and those
/// back after a reschedule still resume on their own. Shortest first (drain.lua renews them
/// all when the first runs low).
pub const ALARM_SECONDS: [u32; 3] = [5, 60, 900];

/// The word of the alarm that goes off `seconds` after its last renewal (`alarm:<seconds>`,
/// as lib.lua's `alarm_key` builds it and spin.toml's triggers name it).
pub fn alarm_word(seconds: u32) -> String {
    format!("{}{seconds}", word::ALARM)
}

/// Key names under one configurable prefix (the `key_prefix` variable).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    log: String,
}

impl Keys {
    pub fn new(prefix: &str, log: &str) -> Self {
        Keys { prefix: prefix.to_string(), log: log.to_string() }
    }

    /// The prefix; the Lua scripts build their keys from it and `word`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The task log stream.
    pub fn log(&self) -> &str {
        &self.log
    }

    /// A lane's ledger (Redis or Spin's key-value store): its recent slots.
    pub fn ledger(&self, lane: &LaneKey) -> String {
        format!("{}{}{}", self.prefix, word::LEDGER, lane.0)
    }

    /// A task's record (hash). Task ids are generated by us (`new_task_id`), never taken
    /// from input without `is_task_id`.
    pub fn task(&self, task_id: &str) -> String {
        format!("{}{}{task_id}", self.prefix, word::TASK)
    }

    /// A lane's queue of pending tasks (a list), as the Lua scripts name it.
    pub fn queue(&self, lane: &LaneKey) -> String {
        format!("{}{}{}", self.prefix, word::QUEUE, lane.0)
    }

    /// The user's tier (a string; absent for the built-in tier).
    pub fn tier(&self, user: &UserKey) -> String {
        format!("{}{}{}", self.prefix, word::TIER, user.0)
    }

    /// Idempotency record for one (user, Idempotency-Key) pair.
    pub fn idempotency(&self, user: &UserKey, key: &str) -> String {
        format!("{}{}{}:{}", self.prefix, word::IDEMPOTENCY, user.0, encode(key.as_bytes()))
    }

    /// An API key's record (hash: `u` user id, `h` SHA-256 of the key, `c` created-at).
    /// Key ids are generated by us, never taken from input without `auth::is_key_id`.
    pub fn api_key(&self, key_id: &str) -> String {
        format!("{}{}{key_id}", self.prefix, word::API_KEY)
    }

    /// The ids of a user's API keys (a set).
    pub fn user_api_keys(&self, user: &UserKey) -> String {
        format!("{}{}{}", self.prefix, word::USER_API_KEYS, user.0)
    }

    /// The list a worker's long poll for `kind` waits on (`BLPOP`); `file_pulled` (lib.lua) pushes it.
    pub fn bell(&self, kind: &str) -> String {
        format!("{}{}{kind}", self.prefix, word::BELL)
    }

    /// The ids of the worker keys (a set).
    pub fn worker_keys(&self) -> String {
        format!("{}{}", self.prefix, word::WORKER_KEYS)
    }

    /// The pub/sub channel that wakes the drainer (must match spin.toml).
    pub fn tick_channel(&self) -> String {
        format!("{}{}", self.prefix, word::TICK)
    }
}

/// A user id encoded for use inside keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserKey(pub String);

impl UserKey {
    pub fn new(user_id: &str) -> Self {
        UserKey(encode(user_id.as_bytes()))
    }
}

fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A lane: one user's tasks of one kind. It is the user's own key part for the
/// `default` kind (so every key of a user from before kinds existed stays theirs) and
/// `<user>:<kind>` for the others: an encoded user id never contains `:` and a kind name is
/// `[A-Za-z0-9_.-]` (`policy::check_name`), so two lanes never share a key. The Lua scripts
/// take it as the "member" (of `due`, and the part after `q:`, `done:` and `ledger:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneKey(pub String);

impl LaneKey {
    pub fn new(user: &UserKey, kind: &str) -> Self {
        if kind == crate::policy::DEFAULT_KIND {
            LaneKey(user.0.clone())
        } else {
            LaneKey(format!("{}:{kind}", user.0))
        }
    }
}

/// Task ids: 96 random bits as 24 lowercase hex characters.
pub const TASK_ID_LEN: usize = 24;

/// A task id from 96 random bits (`high`'s low 32 and `low`); the caller draws them (the
/// component from the host's random source).
pub fn task_id(high: u64, low: u64) -> String {
    format!("{:08x}{low:016x}", high & 0xFFFF_FFFF)
}

/// Whether `s` has the shape of an id we generate (checked before it goes into a key).
pub fn is_task_id(s: &str) -> bool {
    s.len() == TASK_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::XorShift;

    #[test]
    fn plain_ids_stay_readable() {
        assert_eq!(UserKey::new("user-123_a.b~c").0, "user-123_a.b~c");
    }

    #[test]
    fn separators_and_specials_are_escaped() {
        for hostile in [":", "*", "{", "}", "\n", "\0", " ", "%", "a:q:b", "t:abc", "ledger:x"] {
            let key = UserKey::new(hostile).0;
            assert!(!key.contains([':', '*', '{', '}', '\n', '\0', ' ']), "{hostile:?} -> {key}");
        }
        assert_eq!(UserKey::new("a:b").0, "a%3Ab");
        assert_eq!(UserKey::new("%3A").0, "%253A");
    }

    #[test]
    fn encoding_is_injective_on_tricky_pairs() {
        let pairs = [("a:b", "a%3Ab"), ("%", "%25"), ("é", "%C3%A9"), ("\0", "%00"), ("", " ")];
        for (x, y) in pairs {
            assert_ne!(UserKey::new(x), UserKey::new(y), "{x:?} vs {y:?}");
        }
    }

    #[test]
    fn keys_of_different_kinds_never_meet() {
        let keys = Keys::new("taskq:", "task_log");
        let user = UserKey::new("t:0123");
        let lane = LaneKey::new(&user, "default");
        assert_eq!(keys.queue(&lane), "taskq:q:t%3A0123");
        assert_ne!(keys.queue(&lane), keys.task("0123"));
        assert_eq!(keys.tier(&user), "taskq:tier:t%3A0123");
    }

    /// A user's lanes never meet each other's or another user's: `a` of kind `b` is not the
    /// user `a:b` (encoded `a%3Ab`) of kind `default`, nor the user `a` of kind `b.c`.
    #[test]
    fn lanes_are_apart() {
        let keys = Keys::new("taskq:", "task_log");
        let lane = |user: &str, kind: &str| keys.queue(&LaneKey::new(&UserKey::new(user), kind));
        assert_eq!(lane("a", "default"), "taskq:q:a");
        assert_eq!(lane("a", "email"), "taskq:q:a:email");
        let all = [lane("a", "b"), lane("a:b", "default"), lane("a", "b.c"), lane("a", "default"), lane("a:b", "c")];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    /// Reverses `encode` (test only: the app never needs to).
    fn decode(key: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut bytes = key.bytes();
        while let Some(b) = bytes.next() {
            if b == b'%' {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            } else {
                out.push(b);
            }
        }
        Some(out)
    }

    /// 20,000 random ids built from separators, escapes, key look-alikes, control bytes and
    /// multi-byte characters: every key uses only unreserved characters and `%`, and decodes
    /// back to its id, so two ids never share a key and no id forms another key's shape.
    #[test]
    fn random_hostile_ids_encode_injectively_to_safe_keys() {
        let pieces: [&str; 16] =
            [":", "*", "{", "}", "%", "%3A", "\n", "\0", " ", "q:", "t:", "ledger:", "taskq:", "😀", "é", "a"];
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let id: String = (0..rng.next(12)).map(|_| rng.pick(&pieces)).collect();
            let key = UserKey::new(&id).0;
            assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-%".contains(&b)), "{id:?} -> {key}");
            assert_eq!(decode(&key).as_deref(), Some(id.as_bytes()), "{id:?} -> {key}");
            if let Some(other) = seen.insert(key.clone(), id.clone()) {
                assert_eq!(other, id, "two ids share the key {key}");
            }
        }
    }

    #[test]
    fn task_ids_are_checked_by_shape() {
        assert!(is_task_id("0123456789abcdef01234567"));
        assert!(!is_task_id("0123456789ABCDEF01234567"));
        assert!(!is_task_id("../../etc"));
        assert!(!is_task_id(""));
    }
}
