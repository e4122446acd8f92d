//! The core of the task API: everything that is true whatever runs it. No spin-sdk, no I/O,
//! no clock of its own; the Spin component (the crate at the repository's root) is built on
//! it, and the fuzz targets and `runtime-tests` use it as it is.
//!
//! # Layout
//! - `slot`: the schedule rule for any policy's windows, pure: the next slot from a lane's
//!   recent slots and the arrival time.
//! - `policy`: kinds, tiers and their windows, as data (the `policies` variable parsed and
//!   checked).
//! - `delivery`: a kind's target and its limits, what an answer's status means, the request's
//!   body and its Standard Webhooks signature; `outbound`: Spin's `allowed_outbound_hosts`
//!   matching, for the `delivery_hosts` variable.
//! - `pull`: the bodies of a worker's claim and outcome (kinds that workers pull).
//! - `user`: `UserId`, a user id that passed the one user-id rule (`UserId::parse`).
//! - `request`: what a request may carry (body and header parsers, path and query ids).
//! - `credentials`: bearer tokens, API-key shapes and digests, JWT verification.
//! - `clock`: the clock the waiting loops take (`Clock`), and a manual one for their tests.
//! - `ledger`: a lane's ledger of recent slots (its stored format) and the compare-and-set
//!   loop that commits slots over any `LedgerStore`.
//! - `keys`: every Redis and key-value key the app writes and the words they are built from
//!   (the Lua gets them from here), and the id shapes (user ids are encoded so they cannot
//!   collide; lanes; task ids).
//! - `scripts`: the Lua scripts (`scripts/*.lua`) and their library; beside each `.lua`, its
//!   contract as one type (`scripts/admit.rs`: its arguments, and its reply read with a
//!   cursor that must reach the end).
//!
//! To add a field to a task: the task record's hash fields are listed in `keys` and written
//! by `scripts/lib.lua` (`file_tasks`); `scripts/read_task.lua` reads it back and
//! `scripts/read_task.rs` parses it into `TaskRecord`; the component's `http::tasks` shows it.

pub mod clock;
pub mod credentials;
pub mod delivery;
pub mod keys;
pub mod ledger;
pub mod outbound;
pub mod policy;
pub mod pull;
pub mod request;
pub mod scripts;
pub mod slot;
pub mod user;

#[cfg(test)]
pub(crate) mod test_rng;
