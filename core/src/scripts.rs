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

mod call;
mod header;
mod log;
mod reply;
mod script;
mod shared;

mod admit;
mod cancel;
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
mod pull;
mod read_task;
mod report;
mod settle;
mod sweep;
mod unit_script;
mod user_state;

pub use admit::{Admission, Admit, AdmitPolicy};
pub use call::{Call, read_reply};
pub use cancel::{Cancel, Cancelled};
pub use drain::{Drain, Drained, Ended, Outcome};
pub use file::{File, TaskToFile};
pub use header::{Header, TASK_TTL_MS};
pub use key_create::KeyCreate;
pub use key_list::KeyList;
pub use key_revoke::KeyRevoke;
pub use log::log_page;
pub use metrics::Metrics;
pub use overview::{LaneView, OpenClaim, Overview, QueuedTask, ReadOverview};
pub use poke::Poke;
pub use position::Position;
pub use prepare::{Prepare, Prepared};
pub use pull::{Pull, Pulled};
pub use read_task::{ReadTask, Status, TaskRecord};
pub use reply::{Cursor, Reply, Unexpected};
pub use report::{Report, Reported};
pub use script::{
    DELIVERY_BUCKETS_MS, LATENESS_BUCKETS_MS, Script, is_function_missing, is_noscript, is_refusal, library, prelude,
};
pub use settle::Settle;
pub use shared::{Admitted, Attempt, Claim, Completion, Earlier, Filed, Logged, Placement};
pub use sweep::{Sweep, Wake};
pub use unit_script::UnitScript;
pub use user_state::{LaneState, ReadUserState, UserState};
