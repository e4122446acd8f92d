//! The Lua scripts (`src/scripts/*.lua`) and how they reach Redis.
//!
//! Every script is `lib.lua` (shared functions; `configure` takes the configuration from
//! ARGV[1..6]) and its own body (arguments from ARGV[7]), run as a function whose counters
//! are written when it returns. They reach Redis in one of two ways:
//!
//! - **As one Redis Functions library** (`FUNCTION LOAD` once, then `FCALL`), so the 15 KB
//!   of shared code is compiled and run once, not on every call (measured with `redis-cli -r
//!   20000` on Redis 7.0: a script that only runs the shared prelude costs 4.1–4.8 µs per
//!   `EVALSHA`, the same as a function 1.5 µs per `FCALL`). Library and function names carry
//!   a hash of the library's text, so replicas of two versions of the app share a Redis
//!   during a rolling upgrade without replacing each other's functions. A fresh or
//!   restarted Redis answers "Function not found", and the caller loads the library then.
//! - **As scripts, where Redis refuses functions** (before 7.0, or with the commands renamed
//!   or denied): `EVALSHA` with the SHA-1 of the script's text, and only when Redis answers
//!   `NOSCRIPT` the text itself with `EVAL` (4–20 KB), which caches it for every replica.
//!   An instance that met a refusal keeps to scripts for the requests it still serves.

//!
//! Each script's contract is one type beside its text (`admit.lua` and `admit.rs`): its
//! arguments are the type's fields, `Call::args` gives its ARGV after the shared `Header`,
//! and `Call::parse` reads its reply with a `Cursor` that must reach the reply's end.

use std::sync::OnceLock;

mod header;
mod log;
mod reply;
mod shared;

mod admit;
mod cancel;
mod count_status;
mod drain;
mod file;
mod key_create;
mod key_list;
mod key_revoke;
mod metrics;
mod overview;
mod poke;
mod position;
mod prepare;
mod read_task;
mod release;
mod sweep;
mod user_state;

pub use admit::{Admission, Admit, AdmitPolicy};
pub use cancel::{Cancel, Cancelled};
pub use count_status::CountStatus;
pub use drain::{Drain, Drained};
pub use file::{File, TaskToFile};
pub use header::{Header, TASK_TTL_MS};
pub use key_create::KeyCreate;
pub use key_list::KeyList;
pub use key_revoke::KeyRevoke;
pub use log::log_page;
pub use metrics::Metrics;
pub use overview::{LaneView, Overview, QueuedTask, ReadOverview};
pub use poke::Poke;
pub use position::Position;
pub use prepare::{Prepare, Prepared};
pub use read_task::{ReadTask, TaskRecord};
pub use release::Release;
pub use reply::{Cursor, Reply, Unexpected};
pub use shared::{Admitted, Completion, Earlier, Filed, Placement};
pub use sweep::Sweep;
pub use user_state::{LaneState, ReadUserState, UserState};

/// One call of a script: what it runs, its arguments, and how its reply reads.
pub trait Call {
    type Output;
    /// The script it runs.
    fn script(&self) -> &'static Script;
    /// Its own arguments (ARGV from 7, after the `Header`).
    fn args(&self) -> Vec<String>;
    /// Its reply, read from the first item; `read_reply` checks that it reached the end.
    fn parse(&self, reply: &mut Cursor) -> Result<Self::Output, Unexpected>;
}

/// `call`'s reply, read whole: an item more or less than its contract is refused.
pub fn read_reply<C: Call + ?Sized>(call: &C, reply: &[Reply]) -> Result<C::Output, Unexpected> {
    let mut cursor = Cursor::new(reply);
    let output = call.parse(&mut cursor)?;
    cursor.finish()?;
    Ok(output)
}

/// Upper bounds of the lateness histogram buckets (ms), for the scripts and `/metrics`.
pub const LATENESS_BUCKETS_MS: [i64; 10] = [1, 2, 5, 10, 20, 50, 100, 250, 1_000, 5_000];

const LIB: &str = include_str!("scripts/lib.lua");

/// One script: its name (a Lua identifier), its body, and, built on first use, its full text
/// and SHA-1 as a script and its function's name in the library.
pub struct Script {
    name: &'static str,
    body: &'static str,
    compiled: OnceLock<(String, String)>,
    function: OnceLock<String>,
}

impl Script {
    const fn new(name: &'static str, body: &'static str) -> Script {
        Script { name, body, compiled: OnceLock::new(), function: OnceLock::new() }
    }

    /// The name `FCALL` calls it by (`<library tag>_<name>`).
    pub fn function(&self) -> &str {
        self.function.get_or_init(|| format!("{}_{}", library().0, self.name))
    }

    /// The full text as a script and its SHA-1 (hex), as `EVALSHA` names it.
    pub fn compiled(&self) -> &(String, String) {
        self.compiled.get_or_init(|| {
            // The body runs as a function so that whichever `return` ends it, the counters it
            // moved are written after it (`flush_counts` in lib.lua).
            let text = format!(
                "{}\n{LIB}\nlocal function body(ARGV)\n{}\nend\nconfigure(ARGV)\nlocal reply = body(ARGV)\nflush_counts()\nreturn reply\n",
                buckets_line(),
                self.body
            );
            let sha = sha1_smol::Sha1::from(&text).digest().to_string();
            (text, sha)
        })
    }
}

pub static PREPARE: Script = Script::new("prepare", include_str!("scripts/prepare.lua"));
pub static ADMIT: Script = Script::new("admit", include_str!("scripts/admit.lua"));
pub static FILE: Script = Script::new("file", include_str!("scripts/file.lua"));
pub static POKE: Script = Script::new("poke", include_str!("scripts/poke.lua"));
pub static DRAIN: Script = Script::new("drain", include_str!("scripts/drain.lua"));
pub static SWEEP: Script = Script::new("sweep", include_str!("scripts/sweep.lua"));
pub static RELEASE: Script = Script::new("release", include_str!("scripts/release.lua"));
pub static POSITION: Script = Script::new("position", include_str!("scripts/position.lua"));
pub static METRICS: Script = Script::new("metrics", include_str!("scripts/metrics.lua"));
pub static COUNT_STATUS: Script = Script::new("count_status", include_str!("scripts/count_status.lua"));
pub static OVERVIEW: Script = Script::new("overview", include_str!("scripts/overview.lua"));
pub static READ_TASK: Script = Script::new("read_task", include_str!("scripts/read_task.lua"));
pub static CANCEL: Script = Script::new("cancel", include_str!("scripts/cancel.lua"));
pub static USER_STATE: Script = Script::new("user_state", include_str!("scripts/user_state.lua"));
pub static KEY_CREATE: Script = Script::new("key_create", include_str!("scripts/key_create.lua"));
pub static KEY_LIST: Script = Script::new("key_list", include_str!("scripts/key_list.lua"));
pub static KEY_REVOKE: Script = Script::new("key_revoke", include_str!("scripts/key_revoke.lua"));

/// Every script, in the library in this order.
const ALL: [&Script; 17] = [
    &PREPARE,
    &ADMIT,
    &FILE,
    &POKE,
    &DRAIN,
    &SWEEP,
    &RELEASE,
    &POSITION,
    &METRICS,
    &COUNT_STATUS,
    &OVERVIEW,
    &READ_TASK,
    &CANCEL,
    &USER_STATE,
    &KEY_CREATE,
    &KEY_LIST,
    &KEY_REVOKE,
];

/// The lateness histogram's bounds, as both forms of the scripts declare them.
fn buckets_line() -> String {
    let buckets: Vec<String> = LATENESS_BUCKETS_MS.iter().map(|b| b.to_string()).collect();
    format!("local lateness_buckets_ms = {{{}}}", buckets.join(", "))
}

/// The Functions library: its name's version tag (`task_api_<16 hex>`, from the hash of
/// everything in it) and its text, which registers `<tag>_<script>` for every script.
pub fn library() -> &'static (String, String) {
    static LIBRARY: OnceLock<(String, String)> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let mut code = format!("{}\n{LIB}\n", buckets_line());
        code.push_str("local function run(body, args)\n  configure(args)\n  local reply = body(args)\n  flush_counts()\n  return reply\nend\n");
        for script in ALL {
            // `script_` keeps a body's name from hiding a function of lib.lua's.
            code.push_str(&format!("local function script_{}(ARGV)\n{}\nend\n", script.name, script.body));
        }
        let tag = format!("task_api_{}", &sha1_smol::Sha1::from(&code).digest().to_string()[..16]);
        for script in ALL {
            code.push_str(&format!(
                "redis.register_function('{tag}_{name}', function(_, args) return run(script_{name}, args) end)\n",
                name = script.name
            ));
        }
        (tag.clone(), format!("#!lua name={tag}\n{code}"))
    })
}

/// Whether an error is Redis's `NOSCRIPT` (the host spells it in its own words: Spin's
/// redis client says "NoScriptError", Redis itself "NOSCRIPT No matching script").
pub fn is_noscript(message: &str) -> bool {
    message.contains("NOSCRIPT") || message.contains("NoScript") || message.contains("No matching script")
}

/// Whether `FCALL` failed because the library is not loaded ("ERR Function not found").
pub fn is_function_missing(message: &str) -> bool {
    message.to_ascii_lowercase().contains("function not found")
}

/// Whether Redis will not run functions at all: a Redis before 7.0 or with `FCALL` renamed
/// ("unknown command"), or an ACL that denies it ("NOPERM").
pub fn is_refusal(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("unknown command") || message.contains("noperm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_has_its_own_sha_of_its_full_text() {
        let mut shas: Vec<&str> = ALL.iter().map(|s| s.compiled().1.as_str()).collect();
        assert!(shas.iter().all(|sha| sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())));
        shas.sort_unstable();
        shas.dedup();
        assert_eq!(shas.len(), ALL.len());
        // Lowercase hex, as Redis names cached scripts (FIPS 180 test vector).
        assert_eq!(sha1_smol::Sha1::from("abc").digest().to_string(), "a9993e364706816aba3e25717850c26c9cd0d89d");
        let (text, _) = SWEEP.compiled();
        assert!(
            text.contains("local function run_due")
                && text.contains(SWEEP.body)
                && text.ends_with("flush_counts()\nreturn reply\n")
        );
    }

    #[test]
    fn the_library_registers_every_script_once_under_its_versioned_name() {
        let (tag, text) = library();
        assert!(tag.starts_with("task_api_") && tag.len() == 25);
        assert!(text.starts_with(&format!("#!lua name={tag}\n")));
        assert!(ALL.iter().all(|s| s.function() == format!("{tag}_{}", s.name)));
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        for name in &names {
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name} is a Lua identifier");
            let registration = format!(
                "redis.register_function('{tag}_{name}', function(_, args) return run(script_{name}, args) end)"
            );
            assert_eq!(text.matches(&registration).count(), 1, "{name}");
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        // Every body is in it, and the configuration is read per call, never at load (a
        // library's top level runs once, without ARGV).
        assert!(ALL.iter().all(|s| text.contains(s.body)));
        assert!(!LIB.lines().any(|line| line.starts_with("local") && line.contains("ARGV")));
    }

    #[test]
    fn function_errors_are_told_apart() {
        assert!(is_function_missing("An error was signalled by the server - ResponseError: Function not found"));
        assert!(is_function_missing("ERR Function not found"));
        assert!(is_refusal(
            "An error was signalled by the server - ResponseError: unknown command 'FCALL', with args beginning with: "
        ));
        assert!(is_refusal("NOPERM User default has no permissions to run the 'fcall' command"));
        assert!(!is_refusal("ERR user_script:12: Script attempted to access nonexistent global variable 'x'"));
        assert!(!is_function_missing("connection refused") && !is_refusal("connection refused"));
    }

    #[test]
    fn noscript_is_recognised_in_each_hosts_words() {
        assert!(is_noscript(
            "An error was signalled by the server - NoScriptError: No matching script. Please use EVAL."
        ));
        assert!(is_noscript("NOSCRIPT No matching script. Please use EVAL."));
        assert!(!is_noscript("connection refused"));
    }
}
