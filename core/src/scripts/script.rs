//! The scripts' texts: each script is `lib.lua`, after what it takes from Rust, and its own
//! body; they reach Redis as one Functions library or one by one (see `scripts`).

use crate::delivery::ADMISSION_STARTS_MAX;
use crate::keys::{ALARM_SECONDS, word};
use crate::policy::DEFAULT_KIND;
use std::sync::OnceLock;

/// Upper bounds of the lateness histogram buckets (ms), for the scripts and `/metrics`.
pub const LATENESS_BUCKETS_MS: [i64; 10] = [1, 2, 5, 10, 20, 50, 100, 250, 1_000, 5_000];
/// Upper bounds of the delivery-duration histogram buckets (ms): from a backend on the same
/// host to the longest timeout a kind may set.
pub const DELIVERY_BUCKETS_MS: [i64; 12] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 60_000];

const LIB: &str = include_str!("lib.lua");

/// One script: its name (a Lua identifier), its body, and, built on first use, its full text
/// and SHA-1 as a script and its function's name in the library.
pub struct Script {
    name: &'static str,
    body: &'static str,
    compiled: OnceLock<(String, String)>,
    function: OnceLock<String>,
}

impl Script {
    pub(crate) const fn new(name: &'static str, body: &'static str) -> Script {
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
                "{}\nlocal function body(ARGV)\n{}\nend\nconfigure(ARGV)\nlocal reply = body(ARGV)\nflush_counts()\nreturn reply\n",
                prelude(),
                self.body
            );
            let sha = sha1_smol::Sha1::from(&text).digest().to_string();
            (text, sha)
        })
    }
}

pub static PREPARE: Script = Script::new("prepare", include_str!("prepare.lua"));
pub static ADMIT: Script = Script::new("admit", include_str!("admit.lua"));
pub static FILE: Script = Script::new("file", include_str!("file.lua"));
pub static POKE: Script = Script::new("poke", include_str!("poke.lua"));
pub static DRAIN: Script = Script::new("drain", include_str!("drain.lua"));
pub static SWEEP: Script = Script::new("sweep", include_str!("sweep.lua"));
pub static RELEASE: Script = Script::new("release", include_str!("release.lua"));
pub static POSITION: Script = Script::new("position", include_str!("position.lua"));
pub static METRICS: Script = Script::new("metrics", include_str!("metrics.lua"));
pub static COUNT_STATUS: Script = Script::new("count_status", include_str!("count_status.lua"));
pub static OVERVIEW: Script = Script::new("overview", include_str!("overview.lua"));
pub static READ_TASK: Script = Script::new("read_task", include_str!("read_task.lua"));
pub static CANCEL: Script = Script::new("cancel", include_str!("cancel.lua"));
pub static USER_STATE: Script = Script::new("user_state", include_str!("user_state.lua"));
pub static KEY_CREATE: Script = Script::new("key_create", include_str!("key_create.lua"));
pub static KEY_LIST: Script = Script::new("key_list", include_str!("key_list.lua"));
pub static KEY_REVOKE: Script = Script::new("key_revoke", include_str!("key_revoke.lua"));
pub static PULL: Script = Script::new("pull", include_str!("pull.lua"));
pub static REPORT: Script = Script::new("report", include_str!("report.lua"));
pub static HANDOVER: Script = Script::new("handover", include_str!("handover.lua"));
pub static SETTLE: Script = Script::new("settle", include_str!("settle.lua"));

/// Every script, in the library in this order.
const ALL: [&Script; 21] = [
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
    &PULL,
    &REPORT,
    &HANDOVER,
    &SETTLE,
];

/// Numbers (a histogram's bounds, the alarms) as a Lua local, as both forms of the scripts
/// declare them.
fn numbers_line(name: &str, numbers: &[i64]) -> String {
    let numbers: Vec<String> = numbers.iter().map(|n| n.to_string()).collect();
    format!("local {name} = {{{}}}", numbers.join(", "))
}

/// What the Lua knows by name from Rust: the key words (`keys::word`) and the default kind.
const LUA_CONSTANTS: [(&str, &str); 17] = [
    ("KEY_LEDGER", word::LEDGER),
    ("KEY_CLAIMS", word::CLAIMS),
    ("KEY_IN_FLIGHT", word::IN_FLIGHT),
    ("KEY_STARTED", word::STARTED),
    ("KEY_QUEUE", word::QUEUE),
    ("KEY_DONE", word::DONE),
    ("KEY_TASK", word::TASK),
    ("KEY_API_KEY", word::API_KEY),
    ("KEY_DUE", word::DUE),
    ("KEY_PULL", word::PULL),
    ("KEY_BELL", word::BELL),
    ("KEY_LEASE", word::LEASE),
    ("KEY_KICK", word::KICK),
    ("KEY_ALARM", word::ALARM),
    ("KEY_TICK", word::TICK),
    ("KEY_METRICS", word::METRICS),
    ("DEFAULT_KIND", DEFAULT_KIND),
];

/// What comes before `lib.lua` in both forms of the scripts: `LUA_CONSTANTS`, the histograms'
/// buckets, the alarms and `ADMISSION_STARTS_MAX`, as Lua locals. (Every value is a key word,
/// a kind name or a number: no quote or backslash to escape.)
fn constants() -> String {
    let mut lines: Vec<String> =
        LUA_CONSTANTS.iter().map(|(name, value)| format!("local {name} = '{value}'")).collect();
    lines.push(numbers_line("lateness_buckets_ms", &LATENESS_BUCKETS_MS));
    lines.push(numbers_line("delivery_buckets_ms", &DELIVERY_BUCKETS_MS));
    lines.push(numbers_line("alarm_seconds", &ALARM_SECONDS.map(i64::from)));
    lines.push(format!("local ADMISSION_STARTS_MAX = {ADMISSION_STARTS_MAX}"));
    lines.join("\n")
}

/// `lib.lua` with what it takes from Rust before it: what every script starts with.
pub fn prelude() -> String {
    format!("{}\n{LIB}", constants())
}

/// The Functions library: its name's version tag (`task_api_<16 hex>`, from the hash of
/// everything in it) and its text, which registers `<tag>_<script>` for every script.
pub fn library() -> &'static (String, String) {
    static LIBRARY: OnceLock<(String, String)> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let mut code = format!("{}\n", prelude());
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

    /// Key words and the default kind have one home, in Rust: no script spells one itself.
    #[test]
    fn the_lua_takes_key_words_and_the_default_kind_from_rust() {
        let (_, library) = library();
        for (name, value) in LUA_CONSTANTS {
            assert!(!value.contains(['\'', '\\', '\n']), "{name}");
            assert!(library.contains(&format!("local {name} = '{value}'\n")), "{name}");
            for text in ALL.iter().map(|s| s.body).chain([LIB]) {
                assert!(!text.contains(&format!("'{value}'")), "{value:?} is spelt in Lua");
                assert!(!text.contains(&format!("\"{value}\"")), "{value:?} is spelt in Lua");
            }
        }
        // Every one is used.
        let code = ALL.iter().map(|s| s.body).chain([LIB]).collect::<String>();
        assert!(LUA_CONSTANTS.iter().all(|(name, _)| code.contains(name)));
        assert!(SWEEP.compiled().0.starts_with(&constants()));
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
