//! Per-user admission accounting in Spin's key-value store, with compare-and-swap.
//!
//! The ledger value holds the user's most recent slots, each tagged with the id of the
//! admission that committed it, and the sequence number of the newest one. Admission is a
//! loop: read (CAS handle), apply `slot::next_slot`, swap, then **confirm from the value read
//! back**, never from `swap`'s answer. Spin 4.1's Redis-backed CAS reports `CasFailed` even
//! when the write landed, and a fixed one could report success for a write that never
//! happened (SPIN-NOTES), so the only trustworthy witness is the stored value: our commit is
//! in if the entry at our sequence number carries our commit id. Writes themselves do obey
//! compare-and-swap on every Spin, so sequence numbers are assigned to exactly one writer.
//!
//! If so many commits follow ours before we read back that our entry has left the window,
//! we cannot tell; we then take it as *not* committed and try again. The worst outcome is a
//! slot that no task uses (a later schedule, never a broken limit or a lost/doubled task).

use crate::slot::{self, Limits};
use spin_sdk::experimental::wasi::keyvalue::{atomics, store};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Entries kept in a ledger value: enough for the slot rule, and at least this many recent
/// commit ids so that a contended admission still finds its own entry when it reads back.
const MIN_KEPT: usize = 32;

/// Give up (503) after this long; SPEC §5 wants an answer within 2 s.
const CAS_BUDGET: Duration = Duration::from_millis(1_500);

#[derive(Debug)]
pub enum LedgerError {
    /// The store failed or did not answer: nothing was committed that a task depends on.
    Unavailable(String),
    /// Too much contention to commit within the budget.
    Contended,
    /// The stored value is not a ledger (someone else wrote the key).
    Corrupt(String),
}

/// The outcome of a committed admission.
pub struct Admission {
    pub slot: i64,
    /// The user's recent slots after this commit, oldest first (for the rate-limit headers).
    pub recent: Vec<i64>,
    /// Swaps that did not commit before this one did (for the `cas_retries` metric).
    pub retries: u32,
}

/// Commits one slot for `commit_id` in the ledger at `key`; `arrival` is the Redis clock
/// when admission began.
pub async fn admit(key: &str, limits: Limits, arrival: i64, commit_id: &str) -> Result<Admission, LedgerError> {
    let bucket = store::open("default").map_err(store_error)?;
    let keep = limits.history().max(MIN_KEPT);
    let started = Instant::now();
    let mut attempt: u32 = 0;
    // `swap` consumes its handle; a failed swap hands back a fresh one, which we reuse.
    let mut fresh_cas = None;
    loop {
        let cas = match fresh_cas.take() {
            Some(cas) => cas,
            None => atomics::Cas::new(&bucket, key).map_err(store_error)?,
        };
        let current = cas.current().map_err(store_error)?;
        let mut ledger = Ledger::decode(current.as_deref())?;
        // The task arrives when its admission commits: the Redis clock reading taken before
        // the loop, advanced by the time spent here (a duration, so no second clock enters).
        // Otherwise a contended first task would start "late" by its own retries, and hold
        // every later task of the user back by as much.
        let arrival = arrival + started.elapsed().as_millis() as i64;
        let slot = slot::next_slot(limits, &ledger.slots(), arrival);
        let seq = ledger.push(slot, commit_id, keep);
        let stored_after = match atomics::swap(cas, &ledger.encode()) {
            // Success is not trusted: read back what is stored.
            Ok(()) => bucket.get(key).map_err(store_error)?,
            // Neither is failure; the fresh handle's current value is our read-back.
            Err(atomics::CasError::CasFailed(fresh)) => {
                let value = fresh.current().map_err(store_error)?;
                fresh_cas = Some(fresh);
                value
            }
            Err(atomics::CasError::StoreError(e)) => return Err(store_error(e)),
        };
        let after = Ledger::decode(stored_after.as_deref())?;
        if after.holds(seq, commit_id) {
            return Ok(Admission { slot, recent: after.slots(), retries: attempt });
        }
        attempt += 1;
        if started.elapsed() > CAS_BUDGET {
            return Err(LedgerError::Contended);
        }
        // Contended: back off a random 0..=2^attempt ms (capped at 16) so writers stop
        // colliding; a handle kept across a sleep would only fail again.
        let cap_ms = 1u64 << attempt.min(4);
        let wait = spin_sdk::wasip3::random::random::get_random_u64() % (cap_ms + 1);
        if wait > 0 {
            fresh_cas = None;
            spin_sdk::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// The user's recent slots as stored now (for the rate-limit headers of a replayed request).
pub fn recent(key: &str) -> Result<Vec<i64>, LedgerError> {
    let bucket = store::open("default").map_err(store_error)?;
    let value = bucket.get(key).map_err(store_error)?;
    Ok(Ledger::decode(value.as_deref())?.slots())
}

fn store_error(e: store::Error) -> LedgerError {
    LedgerError::Unavailable(format!("key-value store: {e:?}"))
}

/// The decoded ledger value: `v1 <seq> <slot>:<commit id> …`, oldest entry first; the
/// last entry has sequence number `seq`.
#[derive(Debug, Default, PartialEq)]
pub struct Ledger {
    seq: u64,
    entries: VecDeque<(i64, String)>,
}

impl Ledger {
    pub fn decode(value: Option<&[u8]>) -> Result<Ledger, LedgerError> {
        let Some(bytes) = value else { return Ok(Ledger::default()) };
        let corrupt = || LedgerError::Corrupt(format!("ledger value {:?}", String::from_utf8_lossy(bytes)));
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt())?;
        let mut words = text.split(' ');
        if words.next() != Some("v1") {
            return Err(corrupt());
        }
        let seq = words.next().and_then(|w| w.parse().ok()).ok_or_else(corrupt)?;
        let mut entries = VecDeque::new();
        for word in words {
            let (slot, id) = word.split_once(':').ok_or_else(corrupt)?;
            entries.push_back((slot.parse().map_err(|_| corrupt())?, id.to_string()));
        }
        Ok(Ledger { seq, entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("v1 {}", self.seq);
        for (slot, id) in &self.entries {
            out.push_str(&format!(" {slot}:{id}"));
        }
        out.into_bytes()
    }

    pub fn slots(&self) -> Vec<i64> {
        self.entries.iter().map(|(slot, _)| *slot).collect()
    }

    /// Appends an entry, keeping the newest `keep`; returns its sequence number.
    pub fn push(&mut self, slot: i64, commit_id: &str, keep: usize) -> u64 {
        self.seq += 1;
        self.entries.push_back((slot, commit_id.to_string()));
        while self.entries.len() > keep {
            self.entries.pop_front();
        }
        self.seq
    }

    /// Whether the entry with sequence number `seq` is ours. `false` when it is someone
    /// else's, when the ledger has not reached `seq`, or when the entry has left the window.
    pub fn holds(&self, seq: u64, commit_id: &str) -> bool {
        if seq == 0 || seq > self.seq {
            return false;
        }
        let back = (self.seq - seq) as usize;
        back < self.entries.len() && self.entries[self.entries.len() - 1 - back].1 == commit_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_encoding() {
        let mut ledger = Ledger::default();
        ledger.push(1_000, "aaa", 3);
        ledger.push(2_000, "bbb", 3);
        let back = Ledger::decode(Some(&ledger.encode())).map_err(|e| format!("{e:?}"));
        assert_eq!(back, Ok(ledger));
    }

    #[test]
    fn keeps_only_the_newest_entries() {
        let mut ledger = Ledger::default();
        for i in 0..10 {
            ledger.push(i * 1_000, &format!("c{i}"), 4);
        }
        assert_eq!(ledger.slots(), vec![6_000, 7_000, 8_000, 9_000]);
        assert_eq!(ledger.seq, 10);
    }

    #[test]
    fn a_commit_is_recognised_only_at_its_own_sequence_number() {
        let mut ledger = Ledger::default();
        let mine = ledger.push(1_000, "mine", 3);
        assert!(ledger.holds(mine, "mine"));
        assert!(!ledger.holds(mine, "theirs"));
        assert!(!ledger.holds(mine + 1, "mine"));
        // Someone else won the same sequence number: not ours.
        let mut other = Ledger::default();
        other.push(1_000, "theirs", 3);
        assert!(!other.holds(mine, "mine"));
        // Pushed out of the window: unknown, reported as not ours.
        for i in 0..3 {
            ledger.push(2_000 + i, "later", 3);
        }
        assert!(!ledger.holds(mine, "mine"));
    }

    #[test]
    fn foreign_values_are_reported_not_guessed() {
        assert!(matches!(Ledger::decode(Some(b"hello")), Err(LedgerError::Corrupt(_))));
        assert!(matches!(Ledger::decode(Some(b"v1 x")), Err(LedgerError::Corrupt(_))));
        assert_eq!(Ledger::decode(None).map_err(|e| format!("{e:?}")), Ok(Ledger::default()));
    }
}
