//! A small stand-in for `spin up`: runs a Spin app's components (built for `wasm32-wasip2`
//! with spin-sdk 7) on wasmtime 47, against real Redis, the way Spin 4.1 does where the app
//! can tell the difference. Used by the end-to-end tests and as a local runner for people
//! without the Spin CLI.
//!
//! # Layout
//! - `manifest`: the part of `spin.toml` and the runtime-config file the host reads.
//! - `host`: the `bindgen!` world, the per-instance state, and one file per interface:
//!   `redis` (outbound Redis), `key_value` (wasi:keyvalue store + atomics, correct or lossy
//!   CAS), `variables` (spin:variables).
//! - `trigger::http`: serves `wasi:http/handler` over hyper, a fresh instance per request.
//! - `trigger::redis`: subscribes to the manifest's channels; one message at a time per
//!   address, a fresh instance each; exits when the subscription drops, as Spin does.
//! - `check`: the SPEC §1 log checker shared by the `check_log` binary and the tests.
//! - `cluster`: redis-server and host processes plus an HTTP client, for tests and bench.

pub mod check;
pub mod cluster;
pub mod host;
pub mod manifest;
pub mod trigger;

use anyhow::Context;
use host::key_value::{Backend, CasMode};
use manifest::StoreBackend;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a Redis call may take before the guest gets an error: SPEC §5 wants a 503
/// within 2 s when Redis cannot answer, and admission makes several calls.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_millis(400);
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(400);

/// What `spin-host` was asked to run.
pub struct HostConfig {
    pub manifest: PathBuf,
    pub runtime_config: Option<PathBuf>,
    /// Variable values from the command line and `SPIN_VARIABLE_*`, command line first.
    pub variables: HashMap<String, String>,
    pub cas_mode: CasMode,
}

/// Process-wide services shared by every instance: Redis connections and key-value stores.
pub struct Services {
    pub cas_mode: CasMode,
    stores: HashMap<String, StoreBackend>,
    redis: tokio::sync::Mutex<HashMap<String, ConnectionManager>>,
    memory: std::sync::Mutex<HashMap<String, Backend>>,
}

impl Services {
    fn new(cas_mode: CasMode, stores: HashMap<String, StoreBackend>) -> Services {
        Services { cas_mode, stores, redis: Default::default(), memory: Default::default() }
    }

    /// The shared connection to `address`, opened on first use (and re-opened by the
    /// connection manager after Redis restarts).
    pub async fn redis(&self, address: &str) -> Result<ConnectionManager, host::spin::redis::redis::Error> {
        use host::spin::redis::redis::Error;
        if let Some(conn) = self.redis.lock().await.get(address) {
            return Ok(conn.clone());
        }
        let client = redis::Client::open(address).map_err(|_| Error::InvalidAddress)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_CONNECT_TIMEOUT)
            .set_response_timeout(REDIS_RESPONSE_TIMEOUT)
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(REDIS_CONNECT_TIMEOUT * 2, client.get_connection_manager_with_config(config))
            .await
            .map_err(|_| Error::Other(format!("connecting to {address} timed out")))?
            .map_err(|e| Error::Other(format!("connecting to {address}: {e}")))?;
        Ok(self.redis.lock().await.entry(address.to_string()).or_insert(conn).clone())
    }

    /// The backend of the key-value store `label`.
    pub async fn store(&self, label: &str) -> Result<Backend, host::wasi::keyvalue::store::Error> {
        use host::wasi::keyvalue::store::Error;
        match self.stores.get(label) {
            None => Err(Error::NoSuchStore),
            Some(StoreBackend::Redis { url }) => {
                self.redis(url).await.map(Backend::Redis).map_err(|e| Error::Other(format!("{e:?}")))
            }
            Some(StoreBackend::Memory) => {
                let mut memory = self.memory.lock().map_err(|e| Error::Other(e.to_string()))?;
                Ok(memory.entry(label.to_string()).or_insert_with(|| Backend::Memory(Default::default())).clone())
            }
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
    allowed.iter().filter_map(|a| parts(a)).any(|(s, h, p)| {
        s == scheme && (h == "*" || h.eq_ignore_ascii_case(&host)) && (p == "*" || p == port)
    })
}

/// Loads the app, subscribes its Redis triggers, serves HTTP on `listener`, and prints
/// `Serving http://<addr>` once both are ready. Returns when `shutdown` resolves, or with an
/// error when a Redis subscription drops (the caller exits, as Spin does).
pub async fn run(config: HostConfig, listener: TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let app = manifest::load(&config.manifest, config.runtime_config.as_deref(), &config.variables)?;
    let engine = trigger::engine()?;
    let linker = host::linker(&engine).map_err(trigger::wasm_error)?;
    let services = Arc::new(Services::new(config.cas_mode, app.stores.clone()));
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
