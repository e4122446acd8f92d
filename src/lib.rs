//! A per-user rate-limited task API for Spin (by default 1 task/s and 20 tasks per rolling
//! minute per user; over-limit tasks are queued durably and run at the earliest instant both
//! limits allow).
//!
//! # Layout
//! The rule, policies, keys, parsers and the Lua scripts' contracts are the core crate's
//! (`task_core`, in `core/`; `slot`, `policy`, `keys`, `ledger` and `scripts` are named here
//! as the component's own). On top of it, with Spin's APIs:
//! - `config`: Spin variables read into one typed `Config` (the drainer reads only its own).
//! - `queue`: the store: the instance's Redis connection, each call under a deadline, and
//!   `Queue::run` for any script of `task_core::scripts` (`queue::eval`: `FCALL`, or
//!   `EVALSHA` where Redis refuses functions).
//! - `kv_ledger`: the `kv` ledger backend on Spin's key-value store (compare-and-swap checked
//!   by reading back); the `redis` backend lives inside `admit.lua`.
//! - `admission`: a validated request to a stored task, as an `Outcome`.
//! - `drainer`: the Redis-triggered component that runs queued tasks at their slots, and
//!   claims, delivers and records the attempts of tasks whose kind has a target.
//! - `delivery`: one attempt: the signed request to the kind's target and how it ended.
//!   A pulled kind's attempts are claimed and reported by workers instead (`http::claims`);
//!   the drainer only retries their lapsed claims.
//! - `log`: the seed-format lines on stdout.
//! - `deadline`: bounded waits (Spin's Redis client has no timeout) and the host clock the
//!   waiting loops take.
//! - `auth`: who is calling (the `auth` variable: none, JWT or API keys) and what they may do.
//! - `http`: the HTTP API: the route table (`http/mod.rs`), one file per resource, `answer`
//!   (what handlers answer with), `headers` (the rate-limit fields) and `openapi` (the
//!   contract, fitted to this deployment).
//! - `problem`: RFC 9457 problem responses, the one error type of the handlers.
//! - `metrics`: `/metrics` in the Prometheus text format.
//!
//! To add a field to a task: parse it in `task_core::request` (`TaskBody`), carry it in
//! `admission::NewTask` to `task_core::scripts::Admit` (and `File`), store it in the task's
//! hash (`core/src/scripts/lib.lua`, `file_tasks`; the field names are listed in
//! `task_core::keys`), read it back in `read_task`, show it in `http::answer::TaskView`, and
//! describe it in `src/openapi.json`.
//!
//! One `.wasm` exports both entry points; spin.toml declares two components from it (`api`
//! for HTTP, `drainer` for Redis messages), each with its own trigger and permissions.

pub mod admission;
pub mod auth;
pub mod config;
pub mod deadline;
pub mod delivery;
pub mod drainer;
pub mod http;
pub mod kv_ledger;
pub mod log;
pub mod metrics;
pub mod problem;
pub mod queue;

// The core's modules, named as the component's own (they were, before the split).
use task_core::{keys, ledger, policy, scripts, slot};

/// The HTTP component: every route of `http::handle`. The entry points exist only in the
/// `.wasm` and under clippy: a native cdylib (the unit tests) would export names such as
/// `[async-lift]spin:redis/…`, which the native linker's version script cannot spell, and
/// clippy does not link, so it lints them natively.
#[cfg(any(target_arch = "wasm32", clippy))]
#[spin_sdk::http_service]
async fn handle(request: spin_sdk::http::Request) -> problem::HttpResponse {
    crate::http::handle(request).await
}

/// The drainer component: a tick or a lease-expiry notification wakes it.
#[cfg(any(target_arch = "wasm32", clippy))]
#[spin_sdk::redis_subscriber]
async fn on_message(message: Vec<u8>) -> anyhow::Result<()> {
    drainer::on_message(message).await
}
