//! Per-user admission accounting: the ledger of a user's recent slots.
//!
//! The ledger value holds the user's most recent slots, each tagged with the id of the
//! admission that committed it, and the sequence number of the newest one (`Ledger`). With
//! the default `redis` backend, `admit.lua` reads and writes it inside the one script that
//! admits a task, so it needs no compare-and-set. With the `kv` backend it lives in Spin's
//! key-value store, and committing is a loop (`commit`): apply `slot::next_slot` to the
//! ledger last seen, ask the store to write the result only if the ledger is still what was
//! seen, and on a conflict go again with the ledger the store reports. Like governor's
//! `StateStore::measure_and_replace`, the loop knows nothing of the storage: a `LedgerStore`
//! only promises compare-and-set (the component's `kv_ledger::KvLedger`; the tests add a
//! contended fake).
//!
//! - `kv` (`KvLedger`): Spin's key-value store with `wasi:keyvalue` atomics. Spin
//!   4.1's Redis-backed CAS reports `CasFailed` even when the write landed, and a fixed one
//!   could report success for a write that never happened, so its answer is
//!   never believed: the write counts as ours only if the value read back carries our
//!   commit id at our sequence number. Writes themselves do obey compare-and-swap on every
//!   Spin, so each sequence number goes to exactly one writer.
//!
//! If so many commits follow ours before the read-back that our entry has left the window,
//! we cannot tell; we then take it as *not* committed and try again. The worst outcome is a
//! slot that no task uses (a later schedule, never a broken limit or a lost/doubled task).

use crate::clock::Clock;
use crate::slot::{self, Spent, Window};
use std::collections::VecDeque;
use std::time::Duration;

/// Give up (503) after this long: a request must be answered within 2 s even when Redis is stuck.
const COMMIT_BUDGET: Duration = Duration::from_millis(1_500);

#[derive(Debug)]
pub enum LedgerError {
    /// The store failed or did not answer: nothing was committed that a task depends on.
    Unavailable(String),
    /// Too much contention to commit within the budget.
    Contended,
    /// The stored value is not a ledger (someone else wrote the key).
    Corrupt(String),
}

/// What a store answers to a compare-and-set.
pub enum Swap {
    /// The write landed.
    Landed,
    /// The ledger had changed: here it is as stored now.
    Conflict { current: Ledger },
}

/// Storage that can replace a user's ledger atomically.
// A component runs on one thread: its futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait LedgerStore {
    /// How many entries a ledger keeps, given `history`, what the rule needs.
    fn keep(&self, history: usize) -> usize;

    /// Writes `new` (which ends with our entries) only if the stored ledger is still
    /// `expected`.
    async fn compare_and_set(&mut self, expected: &Ledger, new: &Ledger) -> Result<Swap, LedgerError>;

    /// How long to wait before attempt number `attempt` (1 = the first retry), so that
    /// writers stop colliding; the loop sleeps it on its clock.
    fn back_off(&mut self, attempt: u32) -> Duration;
}

/// Committed admissions.
pub struct Committed {
    /// One slot per arrival, in the order given.
    pub slots: Vec<i64>,
    /// The lane's recent slots after this commit, oldest first (for the rate-limit headers).
    pub recent: Vec<Spent>,
    /// Attempts that did not commit before this one did.
    pub retries: u32,
}

/// An admission to commit: when it began (the Redis clock), the id that tags its entry
/// (which only has to differ from the writers racing us), its cost in units and its policy.
pub struct Arrival<'a> {
    pub at: i64,
    pub tag: &'a str,
    pub cost: u32,
    pub windows: &'a [Window],
}

/// Commits the earliest slots the rule allows for admissions of one lane, in FIFO order
/// (`arrivals` oldest first). `history` is how many entries the lane's policies can look
/// at; `seen` is the ledger last read.
pub async fn commit<S: LedgerStore>(
    store: &mut S,
    clock: &impl Clock,
    history: usize,
    mut seen: Ledger,
    arrivals: &[Arrival<'_>],
) -> Result<Committed, LedgerError> {
    let keep = store.keep(history).max(arrivals.len());
    let started = clock.now();
    let mut retries = 0;
    loop {
        let mut new = seen.clone();
        let mut slots = Vec::with_capacity(arrivals.len());
        for arrival in arrivals {
            // A task arrives when its admission commits: at its own Redis clock reading
            // advanced by the time spent here (a duration, so no second clock enters).
            // Otherwise a contended first task would start "late" by its own retries, and
            // hold every later task of the user back by as much.
            let now = arrival.at + clock.since(started).as_millis() as i64;
            let slot = slot::next_slot(arrival.windows, &new.spent(), now, arrival.cost);
            new.push(slot, arrival.tag, arrival.cost, keep);
            slots.push(slot);
        }
        match store.compare_and_set(&seen, &new).await? {
            Swap::Landed => return Ok(Committed { slots, recent: new.spent(), retries }),
            Swap::Conflict { current } => seen = current,
        }
        retries += 1;
        if clock.since(started) > COMMIT_BUDGET {
            return Err(LedgerError::Contended);
        }
        clock.sleep(store.back_off(retries)).await;
    }
}

/// The verdict of a read-back: landed if the ledger read after our write holds our entry at
/// our sequence number, whatever the store said of the write.
pub fn confirm(after: Ledger, seq: u64, commit_id: &str) -> Swap {
    if after.holds(seq, commit_id) { Swap::Landed } else { Swap::Conflict { current: after } }
}

/// The decoded ledger value: `v1 <seq> <slot>:<commit id>[*<cost>] …`, oldest entry first
/// (the cost is written only when it is not 1, so an unweighted ledger keeps the fixed
/// entry width `admit.lua` reads in place); the last entry has sequence number `seq`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ledger {
    seq: u64,
    entries: VecDeque<Entry>,
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    slot: i64,
    id: String,
    cost: u32,
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
            let (slot, rest) = word.split_once(':').ok_or_else(corrupt)?;
            let (id, cost) = match rest.split_once('*') {
                Some((id, cost)) => (id, cost.parse().ok().filter(|&c| c > 0).ok_or_else(corrupt)?),
                None => (rest, 1),
            };
            entries.push_back(Entry { slot: slot.parse().map_err(|_| corrupt())?, id: id.to_string(), cost });
        }
        Ok(Ledger { seq, entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("v1 {}", self.seq);
        for Entry { slot, id, cost } in &self.entries {
            out.push_str(&format!(" {slot}:{id}"));
            if *cost != 1 {
                out.push_str(&format!("*{cost}"));
            }
        }
        out.into_bytes()
    }

    /// Each entry's slot and cost, oldest first.
    pub fn spent(&self) -> Vec<Spent> {
        self.entries.iter().map(|e| (e.slot, e.cost)).collect()
    }

    /// The newest entry's sequence number and commit id.
    pub fn newest(&self) -> Option<(u64, &str)> {
        self.entries.back().map(|e| (self.seq, e.id.as_str()))
    }

    /// Appends an entry, keeping the newest `keep`; returns its sequence number.
    pub fn push(&mut self, slot: i64, commit_id: &str, cost: u32, keep: usize) -> u64 {
        self.seq += 1;
        self.entries.push_back(Entry { slot, id: commit_id.to_string(), cost });
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
        back < self.entries.len() && self.entries[self.entries.len() - 1 - back].id == commit_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Manual, run_now};
    use crate::test_rng::XorShift;

    const DEFAULT: [Window; 2] = [Window { quota: 1, window_ms: 1_000 }, Window { quota: 20, window_ms: 60_000 }];
    const HISTORY: usize = 20;

    #[test]
    fn round_trips_through_its_encoding() {
        let mut ledger = Ledger::default();
        ledger.push(1_000, "aaa", 1, 3);
        ledger.push(2_000, "bbb", 4, 3);
        assert_eq!(ledger.encode(), b"v1 2 1000:aaa 2000:bbb*4");
        let back = Ledger::decode(Some(&ledger.encode())).map_err(|e| format!("{e:?}"));
        assert_eq!(back, Ok(ledger));
    }

    #[test]
    fn keeps_only_the_newest_entries() {
        let mut ledger = Ledger::default();
        for i in 0..10 {
            ledger.push(i * 1_000, &format!("c{i}"), 1, 4);
        }
        assert_eq!(ledger.spent(), vec![(6_000, 1), (7_000, 1), (8_000, 1), (9_000, 1)]);
        assert_eq!(ledger.seq, 10);
    }

    #[test]
    fn a_commit_is_recognised_only_at_its_own_sequence_number() {
        let mut ledger = Ledger::default();
        let mine = ledger.push(1_000, "mine", 1, 3);
        assert!(ledger.holds(mine, "mine"));
        assert!(!ledger.holds(mine, "theirs"));
        assert!(!ledger.holds(mine + 1, "mine"));
        // Someone else won the same sequence number: not ours.
        let mut other = Ledger::default();
        other.push(1_000, "theirs", 1, 3);
        assert!(!other.holds(mine, "mine"));
        // Pushed out of the window: unknown, reported as not ours.
        for i in 0..3 {
            ledger.push(2_000 + i, "later", 1, 3);
        }
        assert!(!ledger.holds(mine, "mine"));
    }

    #[test]
    fn foreign_values_are_reported_not_guessed() {
        assert!(matches!(Ledger::decode(Some(b"hello")), Err(LedgerError::Corrupt(_))));
        assert!(matches!(Ledger::decode(Some(b"v1 x")), Err(LedgerError::Corrupt(_))));
        assert!(matches!(Ledger::decode(Some(b"v1 1 5:a*0")), Err(LedgerError::Corrupt(_))));
        assert!(matches!(Ledger::decode(Some(b"v1 1 5:a*x")), Err(LedgerError::Corrupt(_))));
        assert_eq!(Ledger::decode(None).map_err(|e| format!("{e:?}")), Ok(Ledger::default()));
    }

    /// A store shared by several writers, in memory, with exact compare-and-set (as Spin's
    /// WATCH is) whose answer is not looked at (as it cannot be on Spin): before each of our
    /// attempts a rival may commit first, and the verdict comes from the read-back.
    struct FakeStore {
        stored: Ledger,
        rng: XorShift,
        windows: Vec<Window>,
        rival_commits: u32,
    }

    impl LedgerStore for FakeStore {
        fn keep(&self, history: usize) -> usize {
            history + 1
        }

        async fn compare_and_set(&mut self, expected: &Ledger, new: &Ledger) -> Result<Swap, LedgerError> {
            if self.rng.next(2) == 0 {
                let cost = 1 + self.rng.next(2) as u32;
                let slot = slot::next_slot(&self.windows, &self.stored.spent(), 0, cost);
                self.stored.push(slot, "rival", cost, self.keep(HISTORY));
                self.rival_commits += 1;
            }
            if self.stored == *expected {
                self.stored = new.clone();
            }
            Ok(confirm(self.stored.clone(), new.seq, new.newest().map_or("", |(_, id)| id)))
        }

        fn back_off(&mut self, _attempt: u32) -> Duration {
            Duration::ZERO
        }
    }

    /// Under contention, every commit the loop reports is in the stored ledger exactly once,
    /// at the slot the rule gives after the entries before it.
    #[test]
    fn contended_commits_land_exactly_once_on_the_rule() {
        let mut store = FakeStore {
            stored: Ledger::default(),
            rng: XorShift(0x5DEE_CE66_D1CE_4E5B),
            windows: DEFAULT.to_vec(),
            rival_commits: 0,
        };
        for i in 0..200 {
            let id = format!("c{i}");
            let seen = store.stored.clone();
            let cost = 1 + (i % 3) as u32;
            let arrival = [Arrival { at: 0, tag: &id, cost, windows: &DEFAULT }];
            let Ok(committed) = run_now(commit(&mut store, &Manual::new(), HISTORY, seen, &arrival)) else {
                panic!("commit {i} failed")
            };
            let entries = &store.stored.entries;
            assert_eq!(entries.iter().filter(|e| e.id == id).count(), 1, "commit {i}");
            let last = entries.back().cloned().unwrap_or(Entry { slot: 0, id: String::new(), cost: 0 });
            assert_eq!((last.slot, last.id.as_str(), last.cost), (committed.slots[0], id.as_str(), cost), "commit {i}");
            let before: Vec<Spent> = entries.iter().rev().skip(1).map(|e| (e.slot, e.cost)).rev().collect();
            assert_eq!(last.slot, slot::next_slot(&DEFAULT, &before, 0, cost), "commit {i}");
        }
        assert!(store.rival_commits > 50, "the fake store did contend");
    }

    /// A store that takes any write, for the batch test.
    struct Accepting(Ledger);

    impl LedgerStore for Accepting {
        fn keep(&self, history: usize) -> usize {
            history
        }

        async fn compare_and_set(&mut self, _: &Ledger, new: &Ledger) -> Result<Swap, LedgerError> {
            self.0 = new.clone();
            Ok(Swap::Landed)
        }

        fn back_off(&mut self, _attempt: u32) -> Duration {
            Duration::ZERO
        }
    }

    /// Several admissions committed together get the slots they would have got one by one,
    /// in FIFO order: here 25 arrivals at 0 after 5 earlier slots, as in the default policy's example.
    #[test]
    fn a_batch_gets_the_slots_of_its_members_one_by_one() {
        let mut earlier = Ledger::default();
        for i in 0..5 {
            earlier.push(i * 1_000, "old", 1, 20);
        }
        let ids: Vec<String> = (0..25).map(|i| format!("b{i}")).collect();
        let arrivals: Vec<Arrival> =
            ids.iter().map(|id| Arrival { at: 0, tag: id, cost: 1, windows: &DEFAULT }).collect();
        let mut store = Accepting(Ledger::default());
        let Ok(committed) = run_now(commit(&mut store, &Manual::new(), HISTORY, earlier.clone(), &arrivals)) else {
            panic!("commit failed")
        };
        let mut one_by_one = earlier.spent();
        for _ in 0..25 {
            let slot = slot::next_slot(&DEFAULT, &one_by_one, 0, 1);
            one_by_one.push((slot, 1));
        }
        let slots: Vec<i64> = one_by_one[5..].iter().map(|(s, _)| *s).collect();
        assert_eq!(committed.slots, slots);
        assert_eq!(committed.slots[14..17], [19_000, 60_000, 61_000]);
        assert_eq!(store.0.entries.back().map(|e| e.id.as_str()), Some("b24"));
    }

    /// A store that refuses every write, as if rivals always got there first, and asks for
    /// `wait` between attempts.
    struct Refusing {
        wait: Duration,
        attempts: u32,
    }

    impl LedgerStore for Refusing {
        fn keep(&self, history: usize) -> usize {
            history
        }

        async fn compare_and_set(&mut self, expected: &Ledger, _: &Ledger) -> Result<Swap, LedgerError> {
            self.attempts += 1;
            Ok(Swap::Conflict { current: expected.clone() })
        }

        fn back_off(&mut self, _attempt: u32) -> Duration {
            self.wait
        }
    }

    /// A commit that never lands gives up once its budget has passed on its clock, having
    /// slept the store's back-off between attempts.
    #[test]
    fn a_commit_gives_up_after_its_budget() {
        let clock = Manual::new();
        let mut store = Refusing { wait: Duration::from_millis(16), attempts: 0 };
        let arrival = [Arrival { at: 0, tag: "c", cost: 1, windows: &DEFAULT }];
        let result = run_now(commit(&mut store, &clock, HISTORY, Ledger::default(), &arrival));
        assert!(matches!(result, Err(LedgerError::Contended)));
        let budget_attempts = (COMMIT_BUDGET.as_millis() / 16) as u32;
        assert!((budget_attempts..=budget_attempts + 2).contains(&store.attempts), "{} attempts", store.attempts);
        assert_eq!(clock.sleeps(), store.attempts - 1);
        assert!(clock.now() > COMMIT_BUDGET && clock.now() <= COMMIT_BUDGET + Duration::from_millis(16));
    }

    /// A store that refuses `conflicts` writes, each after `spent` passed on the clock.
    struct LateLanding<'c> {
        clock: &'c Manual,
        spent: Duration,
        conflicts: u32,
    }

    impl LedgerStore for LateLanding<'_> {
        fn keep(&self, history: usize) -> usize {
            history
        }

        async fn compare_and_set(&mut self, expected: &Ledger, _: &Ledger) -> Result<Swap, LedgerError> {
            self.clock.advance(self.spent);
            if self.conflicts == 0 {
                return Ok(Swap::Landed);
            }
            self.conflicts -= 1;
            Ok(Swap::Conflict { current: expected.clone() })
        }

        fn back_off(&mut self, _attempt: u32) -> Duration {
            Duration::ZERO
        }
    }

    /// A task arrives when its admission commits: after three lost attempts of 40 ms each its
    /// slot is its arrival plus the 120 ms they took (not its first try's instant, which would
    /// make it "late" by its own retries), and it reports the retries.
    #[test]
    fn a_contended_arrival_is_taken_at_its_commit() {
        let clock = Manual::new();
        let mut store = LateLanding { clock: &clock, spent: Duration::from_millis(40), conflicts: 3 };
        let arrival = [Arrival { at: 5_000, tag: "c", cost: 1, windows: &DEFAULT }];
        let Ok(committed) = run_now(commit(&mut store, &clock, HISTORY, Ledger::default(), &arrival)) else {
            panic!("commit failed")
        };
        assert_eq!((committed.slots, committed.retries), (vec![5_120], 3));
    }
}
