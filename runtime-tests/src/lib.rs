//! A small stand-in for `spin up`: runs a Spin app's components (built for `wasm32-wasip2`
//! with spin-sdk 7) on wasmtime 47, against real Redis, the way Spin 4.1 does where the app
//! can tell the difference. Used by the end-to-end tests and as a local runner for people
//! without the Spin CLI.
//!
//! # Layout
//! - `manifest`: the part of `spin.toml` and the runtime-config file the host reads.
//! - `host`: the `bindgen!` world, the per-instance state, and one file per interface:
//!   `redis` (outbound Redis: a new connection per open), `key_value` (wasi:keyvalue store +
//!   atomics on Redis's WATCH/MULTI/EXEC, a connection per CAS handle, correct or lossy
//!   answers), `variables` (spin:variables). Each mirrors the Spin file it names, costs
//!   included: no timeouts anywhere, as in Spin.
//! - `trigger::engine`: wasmtime configured as Spin's core configures it (epoch interruption
//!   with a 10 ms ticker, the pooling allocator where the address space allows, a store
//!   limiter and a guest-time call hook on every store); `spin-host` also installs Spin's
//!   tracing subscriber (main.rs), which is what makes the host cost what Spin costs.
//! - `trigger::http`: serves `wasi:http/handler` over hyper as Spin does: no TCP_NODELAY,
//!   the response body streamed, instances reused (128 requests, 16 at once, 1 s idle).
//! - `trigger::redis`: subscribes to the manifest's channels; one message at a time per
//!   address, a fresh instance each; exits when the subscription drops, as Spin does.
//! - `check`: the SPEC §1 log checker shared by the `check_log` binary and the tests.
//! - `cluster`: redis-server and host processes plus HTTP clients (one request per
//!   connection, or keep-alive), for tests and bench.

pub mod check;
pub mod cluster;
pub mod host;
pub mod manifest;
pub mod trigger;

use anyhow::Context;
use host::key_value::{Backend, CasMode};
use manifest::StoreBackend;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::OnceCell;

/// What `spin-host` was asked to run.
pub struct HostConfig {
    pub manifest: PathBuf,
    pub runtime_config: Option<PathBuf>,
    /// Variable values from the command line and `SPIN_VARIABLE_*`, command line first.
    pub variables: HashMap<String, String>,
    pub cas_mode: CasMode,
    /// Wasmtime's pooling allocator where the system allows it, as `spin up` does unless
    /// given `--disable-pooling`.
    pub pooling: bool,
}

/// Process-wide services shared by every instance: the key-value stores. (Outbound Redis
/// connections belong to the instance that opened them, as in Spin.)
pub struct Services {
    pub cas_mode: CasMode,
    stores: HashMap<String, Store>,
}

enum Store {
    /// One shared connection per store, opened on first use (key-value-redis store.rs
    /// `KeyValueRedis::get`: a `OnceCell`, `get_connection_manager` with its defaults, so
    /// no timeouts).
    Redis {
        client: redis::Client,
        shared: OnceCell<ConnectionManager>,
    },
    Memory(Arc<Mutex<HashMap<String, Vec<u8>>>>),
}

impl Services {
    fn new(cas_mode: CasMode, backends: &HashMap<String, StoreBackend>) -> anyhow::Result<Services> {
        let mut stores = HashMap::new();
        for (label, backend) in backends {
            let store = match backend {
                StoreBackend::Redis { url } => Store::Redis {
                    client: redis::Client::open(url.as_str())
                        .with_context(|| format!("key-value store {label:?}: invalid Redis URL"))?,
                    shared: OnceCell::new(),
                },
                StoreBackend::Memory => Store::Memory(Default::default()),
            };
            stores.insert(label.clone(), store);
        }
        Ok(Services { cas_mode, stores })
    }

    /// The backend of the key-value store `label`.
    pub async fn store(&self, label: &str) -> Result<Backend, host::wasi::keyvalue::store::Error> {
        use host::wasi::keyvalue::store::Error;
        match self.stores.get(label) {
            None => Err(Error::NoSuchStore),
            Some(Store::Redis { client, shared }) => {
                let shared = shared
                    .get_or_try_init(|| client.get_connection_manager())
                    .await
                    .map_err(|e| Error::Other(e.to_string()))?;
                Ok(Backend::Redis { client: client.clone(), shared: shared.clone() })
            }
            Some(Store::Memory(map)) => Ok(Backend::Memory(map.clone())),
        }
    }
}

/// Whether `address` (`scheme://[user@]host:port[/db]`) is one of `allowed`; `*` matches
/// any host or port.
pub fn allowed_host(allowed: &[String], address: &str) -> bool {
    fn parts(url: &str) -> Option<(String, String, String)> {
        let (scheme, rest) = url.split_once("://")?;
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let authority = rest.split('/').next()?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (authority.to_string(), if scheme == "redis" { "6379".into() } else { "*".into() }),
        };
        Some((scheme.to_string(), host, port))
    }
    let Some((scheme, host, port)) = parts(address) else { return false };
    allowed
        .iter()
        .filter_map(|a| parts(a))
        .any(|(s, h, p)| s == scheme && (h == "*" || h.eq_ignore_ascii_case(&host)) && (p == "*" || p == port))
}

/// Loads the app, subscribes its Redis triggers, serves HTTP on `listener`, and prints
/// `Serving http://<addr>` once both are ready. Returns when `shutdown` resolves, or with an
/// error when a Redis subscription drops (the caller exits, as Spin does).
pub async fn run(config: HostConfig, listener: TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let app = manifest::load(&config.manifest, config.runtime_config.as_deref(), &config.variables)?;
    let engine = trigger::engine::engine(config.pooling)?;
    let linker = host::linker(&engine).map_err(trigger::wasm_error)?;
    let services = Arc::new(Services::new(config.cas_mode, &app.stores)?);
    let components = trigger::prepare_components(&engine, &linker, &app, services)?;

    let mut subscriptions = trigger::redis::subscribe_all(&app, &components).await?;
    let addr = listener.local_addr().context("reading the listener's address")?;
    let http = trigger::http::HttpTrigger::new(&app, &components)?;
    println!("Serving http://{addr}");
    tokio::select! {
        result = http.serve(listener) => result,
        Some(result) = subscriptions.join_next() => match result {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(anyhow::anyhow!("a Redis subscription ended")),
            Err(e) => Err(anyhow::anyhow!("a Redis subscriber failed: {e}")),
        },
        () = shutdown => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_hosts_match_scheme_host_and_port() {
        let allowed = vec!["redis://127.0.0.1:6379".to_string(), "redis://*:7000".to_string()];
        assert!(allowed_host(&allowed, "redis://127.0.0.1:6379"));
        assert!(allowed_host(&allowed, "redis://127.0.0.1:6379/0"));
        assert!(allowed_host(&allowed, "redis://:secret@127.0.0.1:6379"));
        assert!(allowed_host(&allowed, "redis://example.com:7000"));
        assert!(!allowed_host(&allowed, "redis://127.0.0.1:6380"));
        assert!(!allowed_host(&allowed, "rediss://127.0.0.1:6379"));
        assert!(!allowed_host(&allowed, "not a url"));
    }
}
