//! `wasi:keyvalue@0.2.0-draft2` store and atomics over the runtime config's backends.
//!
//! A Redis-backed store costs what Spin's costs (crates/key-value-redis/src/store.rs and
//! crates/factor-key-value/src/host.rs): one shared connection per store, opened on first use
//! with the redis crate's defaults (no timeouts); every `open` sends a PING (`after_open`); keys
//! are plain Redis strings under their own names. Compare-and-swap is Redis's own:
//! - `Cas::new` opens a NEW connection for the handle (`new_compare_and_swap`);
//! - `current` sends WATCH key, then GET key, on it;
//! - `swap` sends MULTI / SET / EXEC on it (EXEC is nil when the key changed since the WATCH:
//!   nothing is written), then `UNWATCH key`, which Redis rejects; Spin turns that error into
//!   `CasFailed` on every swap, which is why its answer cannot be trusted;
//! - a failed swap hands back a fresh handle: another new connection, WATCH + GET on it;
//! - a swapped handle stays in Spin's table, connection open, until the instance ends.
//!
//! What `swap` reports, in one of two modes (the write itself always obeys WATCH):
//! - `Correct`: the truth (EXEC nil or an error → `CasFailed`).
//! - `Lossy`: a coin flip, whatever happened: Spin 4.1's answer (always `CasFailed`) and its
//!   answer once the UNWATCH call is fixed (EXEC nil read as success) made worse; an app
//!   that is exact here is exact on every Spin.
//!
//! Stores without a runtime config live in process memory (Spin would use SQLite), with CAS
//! by value comparison.

use super::Ctx;
use super::wasi::keyvalue::atomics::{self, CasError};
use super::wasi::keyvalue::store::{self, Error, KeyResponse};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tracing::instrument;
use wasmtime::component::Resource;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasMode {
    Correct,
    Lossy,
}

/// An opened store.
#[derive(Clone)]
pub enum Backend {
    /// The store's shared connection, and the client CAS handles open their own with.
    Redis {
        client: redis::Client,
        shared: ConnectionManager,
    },
    Memory(Arc<Mutex<HashMap<String, Vec<u8>>>>),
}

pub type Bucket = Backend;

/// A CAS handle on one key.
pub struct CasHandle {
    backend: Backend,
    key: String,
    state: CasState,
}

enum CasState {
    /// The handle's own connection, where `current` WATCHes the key.
    Redis(ConnectionManager),
    /// The value last read, compared at `swap`.
    Memory(Option<Vec<u8>>),
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

impl Backend {
    /// Spin's `after_open`: a PING on the shared connection, its answer ignored.
    async fn after_open(&self) {
        if let Backend::Redis { shared, .. } = self {
            let _: Result<redis::Value, _> = redis::cmd("PING").query_async(&mut shared.clone()).await;
        }
    }

    async fn query<T: redis::FromRedisValue>(conn: &ConnectionManager, cmd: &redis::Cmd) -> Result<T, Error> {
        cmd.query_async(&mut conn.clone()).await.map_err(other)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        match self {
            Backend::Redis { shared, .. } => Self::query(shared, redis::cmd("GET").arg(key)).await,
            Backend::Memory(map) => Ok(map.lock().map_err(other)?.get(key).cloned()),
        }
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        match self {
            Backend::Redis { shared, .. } => Self::query(shared, redis::cmd("SET").arg(key).arg(value)).await,
            Backend::Memory(map) => {
                map.lock().map_err(other)?.insert(key.to_string(), value.to_vec());
                Ok(())
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        match self {
            Backend::Redis { shared, .. } => Self::query(shared, redis::cmd("DEL").arg(key)).await,
            Backend::Memory(map) => {
                map.lock().map_err(other)?.remove(key);
                Ok(())
            }
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, Error> {
        match self {
            Backend::Redis { shared, .. } => Self::query(shared, redis::cmd("EXISTS").arg(key)).await,
            Backend::Memory(map) => Ok(map.lock().map_err(other)?.contains_key(key)),
        }
    }

    /// Every key at once (Spin: `KEYS *`; a cursor is an error).
    async fn keys(&self, cursor: Option<String>) -> Result<KeyResponse, Error> {
        if cursor.is_some() {
            return Err(Error::Other("list_keys: cursor not supported".to_string()));
        }
        let keys = match self {
            Backend::Redis { shared, .. } => Self::query(shared, redis::cmd("KEYS").arg("*")).await?,
            Backend::Memory(map) => map.lock().map_err(other)?.keys().cloned().collect(),
        };
        Ok(KeyResponse { keys, cursor: None })
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, Error> {
        match self {
            Backend::Redis { shared, .. } => Self::query(shared, redis::cmd("INCRBY").arg(key).arg(delta)).await,
            Backend::Memory(map) => {
                let mut map = map.lock().map_err(other)?;
                let current = match map.get(key) {
                    Some(v) => std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .ok_or_else(|| other("value is not an integer"))?,
                    None => 0,
                };
                let next = current + delta;
                map.insert(key.to_string(), next.to_string().into_bytes());
                Ok(next)
            }
        }
    }

    /// A new CAS handle: on Redis, a new connection of its own (store.rs
    /// `new_compare_and_swap`, `get_connection_manager` with its defaults).
    async fn new_cas(&self, key: String) -> Result<CasHandle, Error> {
        let state = match self {
            Backend::Redis { client, .. } => CasState::Redis(client.get_connection_manager().await.map_err(other)?),
            Backend::Memory(_) => CasState::Memory(self.get(&key).await?),
        };
        Ok(CasHandle { backend: self.clone(), key, state })
    }
}

impl CasHandle {
    /// store.rs `current`: WATCH key, then GET key, on the handle's connection.
    async fn current(&mut self) -> Result<Option<Vec<u8>>, Error> {
        match &mut self.state {
            CasState::Redis(conn) => {
                Backend::query::<()>(conn, redis::cmd("WATCH").arg(&self.key)).await?;
                Backend::query(conn, redis::cmd("GET").arg(&self.key)).await
            }
            CasState::Memory(snapshot) => {
                let value = self.backend.get(&self.key).await?;
                *snapshot = value.clone();
                Ok(value)
            }
        }
    }

    /// store.rs `swap`: MULTI / SET / EXEC, then `UNWATCH key`; whether the write landed
    /// (an error counts as not: Spin reports it as CasFailed too).
    async fn swap(&self, value: &[u8]) -> bool {
        match &self.state {
            CasState::Redis(conn) => {
                let exec: Result<redis::Value, _> =
                    redis::pipe().atomic().set(&self.key, value).query_async(&mut conn.clone()).await;
                // Sent for its cost (one more round trip); Redis rejects it (UNWATCH takes no
                // key) and Spin reports that as CasFailed. The truth is EXEC's reply: nil when
                // the key changed since WATCH, and then nothing was written.
                let _: Result<redis::Value, _> =
                    redis::cmd("UNWATCH").arg(&self.key).query_async(&mut conn.clone()).await;
                matches!(exec, Ok(redis::Value::Array(_)))
            }
            CasState::Memory(snapshot) => {
                let Backend::Memory(map) = &self.backend else { return false };
                let Ok(mut map) = map.lock() else { return false };
                if map.get(&self.key) != snapshot.as_ref() {
                    return false;
                }
                map.insert(self.key.clone(), value.to_vec());
                true
            }
        }
    }
}

/// A cheap random bit for the lossy mode (splitmix64 over a counter seeded from the clock).
fn coin_flip() -> bool {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 1 == 1
}

impl store::Host for Ctx {
    #[instrument(name = "wasi_key_value.open", skip_all, fields(otel.kind = "client"))]
    async fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, Error>> {
        if !self.component.key_value_stores.contains(&identifier) {
            return Ok(Err(Error::AccessDenied));
        }
        let backend = match self.services.store(&identifier).await {
            Ok(backend) => backend,
            Err(e) => return Ok(Err(e)),
        };
        backend.after_open().await;
        Ok(Ok(self.table.push(backend)?))
    }
}

impl store::HostBucket for Ctx {
    #[instrument(name = "wasi_key_value.get", skip_all, fields(otel.kind = "client"))]
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.get(&key).await)
    }

    #[instrument(name = "wasi_key_value.set", skip_all, fields(otel.kind = "client"))]
    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.set(&key, &value).await)
    }

    #[instrument(name = "wasi_key_value.delete", skip_all, fields(otel.kind = "client"))]
    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.delete(&key).await)
    }

    #[instrument(name = "wasi_key_value.exists", skip_all, fields(otel.kind = "client"))]
    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.exists(&key).await)
    }

    #[instrument(name = "wasi_key_value.list_keys", skip_all, fields(otel.kind = "client"))]
    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<KeyResponse, Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.keys(cursor).await)
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Ctx {
    #[instrument(name = "spin_key_value.increment", skip_all, fields(otel.kind = "client"))]
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.increment(&key, delta).await)
    }

    /// factor-key-value host.rs `swap`.
    #[instrument(name = "spin_key_value.swap", skip_all, fields(otel.kind = "client"))]
    async fn swap(&mut self, cas: Resource<CasHandle>, value: Vec<u8>) -> wasmtime::Result<Result<(), CasError>> {
        let handle = self.table.delete(cas)?;
        let written = handle.swap(&value).await;
        let report_success = match self.services.cas_mode {
            CasMode::Correct => written,
            CasMode::Lossy => coin_flip(),
        };
        let (backend, key) = (handle.backend.clone(), handle.key.clone());
        // Spin never takes a swapped handle out of its table: its connection stays open
        // until the instance ends.
        self.swapped.push(handle);
        if report_success {
            return Ok(Ok(()));
        }
        // A new handle (another connection) with `current` already called on it.
        let mut fresh = match backend.new_cas(key).await {
            Ok(fresh) => fresh,
            Err(e) => return Ok(Err(CasError::StoreError(e))),
        };
        if let Err(e) = fresh.current().await {
            return Ok(Err(CasError::StoreError(e)));
        }
        Ok(Err(CasError::CasFailed(self.table.push(fresh)?)))
    }
}

impl atomics::HostCas for Ctx {
    #[instrument(name = "wasi_key_value_cas.new", skip_all, fields(otel.kind = "client"))]
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, Error>> {
        let backend = self.table.get(&bucket)?.clone();
        match backend.new_cas(key).await {
            Ok(handle) => Ok(Ok(self.table.push(handle)?)),
            Err(e) => Ok(Err(e)),
        }
    }

    #[instrument(name = "wasi_key_value_cas.current", skip_all, fields(otel.kind = "client"))]
    async fn current(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(self.table.get_mut(&cas)?.current().await)
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}
