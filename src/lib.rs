//! A per-user rate-limited task API for Spin (SPEC: 1 task/s and 20 tasks per rolling
//! minute per user; over-limit tasks are queued durably and run at the earliest instant both
//! limits allow).
//!
//! # Layout
//! - `slot`: the schedule rule, pure (no I/O, no clock).
//! - `keys`: every key the app writes; user ids encoded so they cannot collide.
//! - `config`: Spin variables read into one typed `Config`.
//! - `ledger`: per-user accounting in Spin's key-value store with compare-and-swap.
//! - `queue`: the queue, the executor and the log on Redis, each step one atomic script.
//! - `api`: routing, request validation, responses and rate-limit headers.
//! - `problem`: RFC 9457 problem responses.
//! - `metrics`: `/metrics` in the Prometheus text format.
//! - `drainer`: the Redis-triggered component that runs queued tasks at their slots.
//!
//! One `.wasm` exports both entry points; spin.toml declares two components from it (`api`
//! for HTTP, `drainer` for Redis messages), each with its own trigger and permissions.

pub mod api;
pub mod config;
pub mod drainer;

pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod problem;
pub mod queue;
pub mod slot;

/// The HTTP component: every route of `api::handle`.
#[spin_sdk::http_service]
async fn handle(request: spin_sdk::http::Request) -> problem::HttpResponse {
    api::handle(request).await
}

/// The drainer component: a tick or a lease-expiry notification wakes it.
#[spin_sdk::redis_subscriber]
async fn on_message(message: Vec<u8>) -> anyhow::Result<()> {
    drainer::on_message(message).await
}

/// A small deterministic generator for the property tests, so that failures reproduce
/// without a seed crate.
#[cfg(test)]
mod test_rng {
    pub struct XorShift(pub u64);

    impl XorShift {
        /// A number in `0..below`.
        pub fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }

        /// One of `choices`.
        pub fn pick<'a, T: ?Sized>(&mut self, choices: &[&'a T]) -> &'a T {
            choices[self.next(choices.len() as u64) as usize]
        }
    }
}
