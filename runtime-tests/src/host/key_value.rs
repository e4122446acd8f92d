//! `wasi:keyvalue@0.2.0-draft2` store and atomics over the runtime config's backends.
//!
//! Redis-backed stores keep each key as a plain Redis string under its own name, exactly as
//! Spin's key-value-redis does. Compare-and-swap follows the contract of Spin's `Cas`
//! (`current` begins optimistic concurrency; `swap` must not write if the value changed
//! since), in one of two modes:
//! - `Correct`: `swap` is one Lua script that writes only if the stored value still equals
//!   the snapshot taken by `new`, and reports truthfully. (Values are compared, not
//!   versions: an A→B→A change goes unnoticed. Spin's WATCH would notice it; the app never
//!   writes the same value twice, so it cannot tell.)
//! - `Lossy`: the write obeys the same compare-and-swap, but the answer is random, whatever
//!   happened. That is Spin 4.1's Redis CAS as SPIN-NOTES describes it (always `CasFailed`,
//!   and after the upstream fix, success for writes that never happened) made worse: an
//!   app that is exact here is exact on every Spin.

use super::Ctx;
use super::wasi::keyvalue::atomics::{self, CasError};
use super::wasi::keyvalue::store::{self, Error, KeyResponse};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::component::Resource;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasMode {
    Correct,
    Lossy,
}

/// An opened store.
#[derive(Clone)]
pub enum Backend {
    Redis(ConnectionManager),
    Memory(Arc<Mutex<HashMap<String, Vec<u8>>>>),
}

pub type Bucket = Backend;

/// A CAS handle: the key and the value it saw.
pub struct CasHandle {
    backend: Backend,
    key: String,
    snapshot: Option<Vec<u8>>,
}

/// Writes `new` under `key` only if the stored value still equals `expected` (nil = absent).
const COMPARE_AND_SET: &str = r#"
local current = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and current == false) or (ARGV[1] == '1' and current == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3])
  return 1
end
return 0
"#;

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

impl Backend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        match self {
            Backend::Redis(conn) => redis::cmd("GET").arg(key).query_async(&mut conn.clone()).await.map_err(other),
            Backend::Memory(map) => Ok(map.lock().map_err(other)?.get(key).cloned()),
        }
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        match self {
            Backend::Redis(conn) => redis::cmd("SET").arg(key).arg(value).query_async(&mut conn.clone()).await.map_err(other),
            Backend::Memory(map) => {
                map.lock().map_err(other)?.insert(key.to_string(), value.to_vec());
                Ok(())
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        match self {
            Backend::Redis(conn) => redis::cmd("DEL").arg(key).query_async(&mut conn.clone()).await.map_err(other),
            Backend::Memory(map) => {
                map.lock().map_err(other)?.remove(key);
                Ok(())
            }
        }
    }

    async fn keys(&self, cursor: Option<String>) -> Result<KeyResponse, Error> {
        match self {
            Backend::Redis(conn) => {
                let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor.unwrap_or_else(|| "0".to_string()))
                    .query_async(&mut conn.clone())
                    .await
                    .map_err(other)?;
                Ok(KeyResponse { keys, cursor: (next != "0").then_some(next) })
            }
            Backend::Memory(map) => Ok(KeyResponse { keys: map.lock().map_err(other)?.keys().cloned().collect(), cursor: None }),
        }
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, Error> {
        match self {
            Backend::Redis(conn) => redis::cmd("INCRBY").arg(key).arg(delta).query_async(&mut conn.clone()).await.map_err(other),
            Backend::Memory(map) => {
                let mut map = map.lock().map_err(other)?;
                let current = match map.get(key) {
                    Some(v) => std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()).ok_or_else(|| other("value is not an integer"))?,
                    None => 0,
                };
                let next = current + delta;
                map.insert(key.to_string(), next.to_string().into_bytes());
                Ok(next)
            }
        }
    }

    /// Writes `new` if the stored value is still `expected`; whether it did.
    async fn compare_and_set(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, Error> {
        match self {
            Backend::Redis(conn) => {
                let written: i64 = redis::cmd("EVAL")
                    .arg(COMPARE_AND_SET)
                    .arg(1)
                    .arg(key)
                    .arg(if expected.is_some() { "1" } else { "0" })
                    .arg(expected.unwrap_or_default())
                    .arg(new)
                    .query_async(&mut conn.clone())
                    .await
                    .map_err(other)?;
                Ok(written == 1)
            }
            Backend::Memory(map) => {
                let mut map = map.lock().map_err(other)?;
                if map.get(key).map(Vec::as_slice) == expected {
                    map.insert(key.to_string(), new.to_vec());
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
        }
    }
}

/// A cheap random bit for the lossy mode (splitmix64 over a counter seeded from the clock).
fn coin_flip() -> bool {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 1 == 1
}

impl store::Host for Ctx {
    async fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, Error>> {
        if !self.component.key_value_stores.contains(&identifier) {
            return Ok(Err(Error::AccessDenied));
        }
        let backend = match self.services.store(&identifier).await {
            Ok(backend) => backend,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self.table.push(backend)?))
    }
}

impl store::HostBucket for Ctx {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.get(&key).await)
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.set(&key, &value).await)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.delete(&key).await)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.get(&key).await.map(|v| v.is_some()))
    }

    async fn list_keys(&mut self, bucket: Resource<Bucket>, cursor: Option<String>) -> wasmtime::Result<Result<KeyResponse, Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.keys(cursor).await)
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Ctx {
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: i64) -> wasmtime::Result<Result<i64, Error>> {
        let backend = self.table.get(&bucket)?.clone();
        Ok(backend.increment(&key, delta).await)
    }

    async fn swap(&mut self, cas: Resource<CasHandle>, value: Vec<u8>) -> wasmtime::Result<Result<(), CasError>> {
        let handle = self.table.delete(cas)?;
        let written = match handle.backend.compare_and_set(&handle.key, handle.snapshot.as_deref(), &value).await {
            Ok(written) => written,
            Err(e) => return Ok(Err(CasError::StoreError(e))),
        };
        let report_success = match self.services.cas_mode {
            CasMode::Correct => written,
            CasMode::Lossy => coin_flip(),
        };
        if report_success {
            return Ok(Ok(()));
        }
        // A failed swap hands back a fresh handle on the latest value, as the WIT requires.
        let snapshot = match handle.backend.get(&handle.key).await {
            Ok(snapshot) => snapshot,
            Err(e) => return Ok(Err(CasError::StoreError(e))),
        };
        let fresh = self.table.push(CasHandle { snapshot, ..handle })?;
        Ok(Err(CasError::CasFailed(fresh)))
    }
}

impl atomics::HostCas for Ctx {
    async fn new(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Resource<CasHandle>, Error>> {
        let backend = self.table.get(&bucket)?.clone();
        let snapshot = match backend.get(&key).await {
            Ok(snapshot) => snapshot,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self.table.push(CasHandle { backend, key, snapshot })?))
    }

    async fn current(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(Ok(self.table.get(&cas)?.snapshot.clone()))
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}
