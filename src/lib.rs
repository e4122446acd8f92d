//! A per-user rate-limited task API for Spin (by default 1 task/s and 20 tasks per rolling
//! minute per user; over-limit tasks are queued durably and run at the earliest instant both
//! limits allow).
//!
//! # Layout
//! - `slot`: the schedule rule for any policy's windows, pure (no I/O, no clock).
//! - `keys`: every key the app writes; user ids encoded so they cannot collide; lanes.
//! - `config`: Spin variables read into one typed `Config`.
//! - `ledger`: the per-user ledger of recent slots, and its compare-and-set loop over Spin's
//!   key-value store (the `kv` backend; the `redis` one lives inside `admit.lua`).
//! - `admission`: a validated request to a stored task, as an outcome.
//! - `queue`: the queue, the executor and the log on Redis: one typed call per script.
//! - `scripts`: the Lua scripts (`src/scripts/*.lua`), sent once and then called by SHA.
//! - `deadline`: bounded waits (Spin's Redis client has no timeout).
//! - `policy`: kinds, tiers and their windows, as data.
//! - `http`: the HTTP API, one file per resource; routing, validation, responses and the
//!   rate-limit fields.
//! - `auth`: who is calling (the `auth` variable: none, JWT or API keys) and what they may do.
//! - `problem`: RFC 9457 problem responses.
//! - `metrics`: `/metrics` in the Prometheus text format.
//! - `drainer`: the Redis-triggered component that runs queued tasks at their slots.
//!
//! One `.wasm` exports both entry points; spin.toml declares two components from it (`api`
//! for HTTP, `drainer` for Redis messages), each with its own trigger and permissions.

pub mod admission;
pub mod auth;
pub mod config;
pub mod deadline;
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
/// `.wasm`: natively (clippy, the unit tests) a cdylib would export names such as
/// `[async-lift]spin:redis/…`, which the native linker's version script cannot spell.
#[cfg(target_arch = "wasm32")]
#[spin_sdk::http_service]
async fn handle(request: spin_sdk::http::Request) -> problem::HttpResponse {
    crate::http::handle(request).await
}

/// The drainer component: a tick or a lease-expiry notification wakes it.
#[cfg(target_arch = "wasm32")]
#[spin_sdk::redis_subscriber]
async fn on_message(message: Vec<u8>) -> anyhow::Result<()> {
    drainer::on_message(message).await
}
