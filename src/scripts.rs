//! The Lua scripts (`src/scripts/*.lua`) and how they reach Redis.
//!
//! Every script is `lib.lua` (shared functions, configuration from ARGV[1..6]) followed by
//! its own body (arguments from ARGV[7]), run as a function whose counters are written when it
//! returns. A script's text is 4–5 KB, so it is sent once:
//! calls use `EVALSHA` with the SHA-1 of the text, and only when Redis answers `NOSCRIPT`
//! (a fresh or restarted Redis, or a new version of the app) is the text sent with `EVAL`,
//! which also caches it in Redis for every replica.

use crate::queue::LATENESS_BUCKETS_MS;
use spin_sdk::redis::{Connection, Error, RedisParameter, RedisResult};
use std::sync::OnceLock;

const LIB: &str = include_str!("scripts/lib.lua");

/// One script: its body, and its full text and SHA-1, built on first use.
pub struct Script {
    body: &'static str,
    compiled: OnceLock<(String, String)>,
}

impl Script {
    const fn new(body: &'static str) -> Script {
        Script { body, compiled: OnceLock::new() }
    }

    /// The full text and its SHA-1 (hex), as `EVALSHA` names it.
    fn compiled(&self) -> &(String, String) {
        self.compiled.get_or_init(|| {
            let buckets: Vec<String> = LATENESS_BUCKETS_MS.iter().map(|b| b.to_string()).collect();
            // The body runs as a function so that whichever `return` ends it, the counters it
            // moved are written after it (`flush_counts` in lib.lua).
            let text = format!(
                "local lateness_buckets_ms = {{{}}}\n{LIB}\nlocal function body()\n{}\nend\nlocal reply = body()\nflush_counts()\nreturn reply\n",
                buckets.join(", "),
                self.body
            );
            let sha = sha1_smol::Sha1::from(&text).digest().to_string();
            (text, sha)
        })
    }
}

pub static PREPARE: Script = Script::new(include_str!("scripts/prepare.lua"));
pub static ADMIT: Script = Script::new(include_str!("scripts/admit.lua"));
pub static FILE: Script = Script::new(include_str!("scripts/file.lua"));
pub static POKE: Script = Script::new(include_str!("scripts/poke.lua"));
pub static DRAIN: Script = Script::new(include_str!("scripts/drain.lua"));
pub static SWEEP: Script = Script::new(include_str!("scripts/sweep.lua"));
pub static RELEASE: Script = Script::new(include_str!("scripts/release.lua"));
pub static POSITION: Script = Script::new(include_str!("scripts/position.lua"));
pub static METRICS: Script = Script::new(include_str!("scripts/metrics.lua"));
pub static COUNT_STATUS: Script = Script::new(include_str!("scripts/count_status.lua"));
pub static OVERVIEW: Script = Script::new(include_str!("scripts/overview.lua"));
pub static READ_TASK: Script = Script::new(include_str!("scripts/read_task.lua"));
pub static CANCEL: Script = Script::new(include_str!("scripts/cancel.lua"));
pub static USER_STATE: Script = Script::new(include_str!("scripts/user_state.lua"));
pub static KEY_CREATE: Script = Script::new(include_str!("scripts/key_create.lua"));
pub static KEY_LIST: Script = Script::new(include_str!("scripts/key_list.lua"));
pub static KEY_REVOKE: Script = Script::new(include_str!("scripts/key_revoke.lua"));

/// Runs `script` with `args` (ARGV from 1: the shared header, then the script's own).
pub async fn eval(conn: &Connection, script: &Script, args: &[&str]) -> Result<Vec<RedisResult>, Error> {
    let (text, sha) = script.compiled();
    match conn.execute("EVALSHA", params(sha, args)).await {
        Err(Error::Other(message)) if is_noscript(&message) => conn.execute("EVAL", params(text, args)).await,
        reply => reply,
    }
}

fn params(script: &str, args: &[&str]) -> Vec<RedisParameter> {
    let mut params = Vec::with_capacity(args.len() + 2);
    params.push(RedisParameter::Binary(script.as_bytes().to_vec()));
    params.push(RedisParameter::Int64(0));
    params.extend(args.iter().map(|a| RedisParameter::Binary(a.as_bytes().to_vec())));
    params
}

/// Whether an error is Redis's `NOSCRIPT` (the host spells it in its own words: Spin's
/// redis client says "NoScriptError", Redis itself "NOSCRIPT No matching script").
fn is_noscript(message: &str) -> bool {
    message.contains("NOSCRIPT") || message.contains("NoScript") || message.contains("No matching script")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_has_its_own_sha_of_its_full_text() {
        let all = [&PREPARE, &ADMIT, &FILE, &POKE, &DRAIN, &SWEEP, &RELEASE, &POSITION, &METRICS, &COUNT_STATUS, &OVERVIEW, &CANCEL, &USER_STATE, &READ_TASK, &KEY_CREATE, &KEY_LIST, &KEY_REVOKE];
        let mut shas: Vec<&str> = all.iter().map(|s| s.compiled().1.as_str()).collect();
        assert!(shas.iter().all(|sha| sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())));
        shas.sort_unstable();
        shas.dedup();
        assert_eq!(shas.len(), all.len());
        // Lowercase hex, as Redis names cached scripts (FIPS 180 test vector).
        assert_eq!(sha1_smol::Sha1::from("abc").digest().to_string(), "a9993e364706816aba3e25717850c26c9cd0d89d");
        let (text, _) = SWEEP.compiled();
        assert!(text.contains("local function run_due") && text.contains(SWEEP.body) && text.ends_with("flush_counts()\nreturn reply\n"));
    }

    #[test]
    fn noscript_is_recognised_in_each_hosts_words() {
        assert!(is_noscript("An error was signalled by the server - NoScriptError: No matching script. Please use EVAL."));
        assert!(is_noscript("NOSCRIPT No matching script. Please use EVAL."));
        assert!(!is_noscript("connection refused"));
    }
}
