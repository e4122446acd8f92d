//! The `kv` ledger backend: a lane's ledger in Spin's key-value store (`default`), written
//! with `wasi:keyvalue` compare-and-swap and confirmed by reading it back (the commit loop and
//! the ledger's format are `task_core::ledger`'s).
//!
//! Spin 4.1's Redis-backed CAS reports `CasFailed` even when the write landed, and a fixed one
//! could report success for a write that never happened, so its answer is never believed: the
//! write counts as ours only if the value read back carries our commit id at our sequence
//! number (`ledger::confirm`).

use crate::config::LedgerBackend;
use spin_sdk::experimental::wasi::keyvalue::{atomics, store};
use std::time::Duration;
use task_core::ledger::{Ledger, LedgerError, LedgerStore, Swap, confirm};
use task_core::slot::Spent;

/// A random duration of 0..=`cap_ms` milliseconds.
fn random_duration(cap_ms: u64) -> Duration {
    Duration::from_millis(spin_sdk::wasip3::random::random::get_random_u64() % (cap_ms + 1))
}

/// The ledger in Spin's key-value store (`default`), with `wasi:keyvalue` compare-and-swap
/// and read-back confirmation (see the module doc).
pub struct KvLedger {
    bucket: store::Bucket,
    key: String,
    /// The handle whose snapshot is the ledger last seen, when we have one.
    cas: Option<atomics::Cas>,
}

/// Entries a key-value ledger keeps: enough for the rule, and at least this many recent
/// commit ids, so that a contended admission still finds its own entry when it reads back.
const KV_MIN_KEPT: usize = 32;

impl KvLedger {
    pub fn open(key: &str) -> Result<KvLedger, LedgerError> {
        Ok(KvLedger { bucket: store::open("default").map_err(store_error)?, key: key.to_string(), cas: None })
    }

    /// The ledger as stored now; the handle that read it starts the first compare-and-swap.
    pub fn read(&mut self) -> Result<Ledger, LedgerError> {
        let cas = atomics::Cas::new(&self.bucket, &self.key).map_err(store_error)?;
        let ledger = Ledger::decode(cas.current().map_err(store_error)?.as_deref())?;
        self.cas = Some(cas);
        Ok(ledger)
    }
}

impl LedgerStore for KvLedger {
    fn keep(&self, history: usize) -> usize {
        history.max(KV_MIN_KEPT)
    }

    async fn compare_and_set(&mut self, expected: &Ledger, new: &Ledger) -> Result<Swap, LedgerError> {
        let cas = match self.cas.take() {
            Some(cas) => cas,
            None => {
                // No handle on what we saw (the last read-back was a plain get): take one,
                // and start over if the ledger moved meanwhile.
                let cas = atomics::Cas::new(&self.bucket, &self.key).map_err(store_error)?;
                let current = Ledger::decode(cas.current().map_err(store_error)?.as_deref())?;
                if current != *expected {
                    self.cas = Some(cas);
                    return Ok(Swap::Conflict { current });
                }
                cas
            }
        };
        // The whole ledger is written as one value, so if its newest entry (the batch's last)
        // is ours at its sequence number, every entry of the batch landed with it.
        let Some((seq, commit_id)) = new.newest() else {
            return Err(LedgerError::Corrupt("a ledger to write without entries".to_string()));
        };
        let stored_after = match atomics::swap(cas, &new.encode()) {
            // Success is not trusted: read back what is stored.
            Ok(()) => self.bucket.get(&self.key).map_err(store_error)?,
            // Neither is failure; the fresh handle's current value is our read-back.
            Err(atomics::CasError::CasFailed(fresh)) => {
                let value = fresh.current().map_err(store_error)?;
                self.cas = Some(fresh);
                value
            }
            Err(atomics::CasError::StoreError(e)) => return Err(store_error(e)),
        };
        Ok(confirm(Ledger::decode(stored_after.as_deref())?, seq, commit_id))
    }

    fn back_off(&mut self, attempt: u32) -> Duration {
        // A random 0..=2^attempt ms (at most 16): a handle kept across a sleep would only
        // fail again, so it is dropped first.
        self.cas = None;
        random_duration(1 << attempt.min(4))
    }
}

/// The lane's recent slots and costs (for the rate-limit fields): with the `redis` backend,
/// from the ledger a script read (`from_redis`); with `kv`, as stored in the key-value store
/// now.
pub fn recent_slots(backend: LedgerBackend, key: &str, from_redis: Option<&[u8]>) -> Result<Vec<Spent>, LedgerError> {
    let stored = match backend {
        LedgerBackend::Redis => return Ok(Ledger::decode(from_redis)?.spent()),
        LedgerBackend::Kv => store::open("default").and_then(|bucket| bucket.get(key)).map_err(store_error)?,
    };
    Ok(Ledger::decode(stored.as_deref())?.spent())
}

fn store_error(e: store::Error) -> LedgerError {
    LedgerError::Unavailable(format!("key-value store: {e:?}"))
}
