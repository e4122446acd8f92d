//! The end-to-end tests, one binary: each module starts its own real `redis-server` and
//! `spin-host` processes (`support`) and talks to them over loopback. One binary instead of
//! one per file: every test binary links wasmtime's host crate, and seventeen of them filled
//! CI's disk once and spent minutes linking.

mod support;

/// The rule's Rust twin, compared with the Lua one by `lua_rule`.
use task_core::slot;
/// The core's seeded generator for random cases (test-only there, so included by path).
#[path = "../../../core/src/test_rng.rs"]
#[allow(dead_code)]
mod test_rng;

mod api;
mod auth;
mod backend;
mod bench_smoke;
mod cancel;
mod check_log;
mod commands;
mod deliveries;
mod drain_chain;
mod engine;
mod failures;
mod keepalive;
mod lua_rule;
mod openapi;
mod outbound;
mod page;
mod policies;
mod pulls;
mod recovery;
mod schedule;
mod schemathesis;
mod shutdown;
mod stall;
