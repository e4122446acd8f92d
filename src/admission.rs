//! Admission: from a validated request to a stored task, as an `Outcome` (HTTP turns
//! outcomes into responses in `api.rs`).
//!
//! With the default `redis` ledger, an uncontended admission is two round trips:
//! 1. `prepare.lua` reads the Redis clock, the user's backlog, the Idempotency-Key and the
//!    user's ledger;
//! 2. `slot::next_slot` gives the slot, and `admit.lua` compares and sets the ledger and files
//!    the task in one step (running it at once if its slot is now, waking the drainer if
//!    nobody leads). On a conflict it answers with the ledger as it is now, and the loop in
//!    `ledger::commit` goes again from there.
//!
//! With the `kv` ledger, the ledger is committed in Spin's key-value store first
//! (`ledger::KvLedger`), then `admit.lua` files the task.

use crate::config::{Config, LedgerBackend};
use crate::drainer::print_log;
use crate::keys::{UserKey, new_task_id};
use crate::ledger::{self, KvLedger, Ledger, LedgerError, LedgerStore, Swap};
use crate::queue::{Admitted, Earlier, Filed, LedgerCheck, NewTask, Placement, Queue, StoreError};
use crate::slot::Limits;
use std::time::{Duration, Instant};

/// When a task's slot has come but the user's previous task ran a few ms late, admission
/// waits for it rather than answering 202 for a task that will run almost at once.
const INLINE_WAIT_STEP: Duration = Duration::from_millis(5);
const INLINE_WAIT_STEPS: u32 = 10;
/// How long a request waits for a concurrent one with the same Idempotency-Key.
const IDEMPOTENCY_WAIT: Duration = Duration::from_millis(1_500);
/// Random back-off cap between compare-and-set attempts on the Redis ledger: a conflict
/// already brought the current ledger, so the first retry goes at once, later ones spread.
const REDIS_BACKOFF_CAP_MS: u64 = 2;

/// A task as the API shows it.
pub struct Task {
    pub task_id: String,
    pub user_id: String,
    pub slot: i64,
    pub placement: Placement,
}

pub enum Outcome {
    /// A new task was stored (and run, if its slot was now).
    Admitted { task: Task, recent: Vec<i64>, now: i64 },
    /// The Idempotency-Key named an earlier task: that one, as it is now.
    Replayed { task: Task, recent: Vec<i64>, now: i64 },
    /// The user's queue is full (`max_backlog`).
    BacklogFull,
    /// A concurrent request with the same Idempotency-Key is still being admitted.
    KeyInUse,
}

#[derive(Debug)]
pub enum AdmitError {
    /// Redis or the key-value store failed before anything was stored.
    Unavailable(String),
    /// Redis did not answer the call that stores the task: it may or may not have run.
    Uncertain(String),
    /// Too much contention on the user's ledger to commit in time; nothing was stored.
    Contended,
    /// Something answered what this code did not expect (a bug, or a foreign value).
    Internal(String),
}

impl From<StoreError> for AdmitError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(e) => AdmitError::Unavailable(e),
            StoreError::Unexpected(e) => AdmitError::Internal(e),
        }
    }
}

impl From<LedgerError> for AdmitError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Unavailable(e) => AdmitError::Unavailable(e),
            LedgerError::Unconfirmed(e) => AdmitError::Uncertain(e),
            LedgerError::Contended => AdmitError::Contended,
            LedgerError::Corrupt(e) => AdmitError::Internal(e),
        }
    }
}

pub async fn admit(config: &Config, user_id: &str, idempotency_key: Option<&str>) -> Result<Outcome, AdmitError> {
    let queue = Queue::connect(config).await?;
    let user = UserKey::new(user_id);
    let idem = idempotency_key.map(|k| config.keys.idempotency(&user, k));
    let ledger_key = config.keys.ledger(&user);
    let in_redis = (config.ledger == LedgerBackend::Redis).then_some(ledger_key.as_str());
    let started = Instant::now();
    let prepared = loop {
        let prepared = queue.prepare(&user, idem.as_deref(), in_redis).await?;
        match &prepared.earlier {
            Earlier::None => break prepared,
            Earlier::Task(task_id) => return replay(config, &queue, &user, task_id, prepared.now, prepared.ledger.as_deref()).await,
            Earlier::Pending if started.elapsed() < IDEMPOTENCY_WAIT => spin_sdk::time::sleep(INLINE_WAIT_STEP).await,
            Earlier::Pending => return Ok(Outcome::KeyInUse),
        }
    };
    if config.max_backlog > 0 && prepared.backlog as u64 >= config.max_backlog {
        release(&queue, idem.as_deref()).await;
        return Ok(Outcome::BacklogFull);
    }
    let task_id = new_task_id();
    let new_task = NewTask {
        user: &user,
        user_id,
        task_id: &task_id,
        slot: 0,
        ledger_key: &ledger_key,
        idempotency_key: idem.as_deref(),
    };
    // A 48-bit prefix of the task id tags our ledger entry.
    let commit_id = &task_id[..12];
    let committed = match config.ledger {
        LedgerBackend::Redis => {
            let seen = Ledger::decode(prepared.ledger.as_deref())?;
            let mut store = ScriptLedger { queue: &queue, task: new_task };
            ledger::commit(&mut store, config.limits, seen, prepared.now, commit_id).await.map_err(AdmitError::from)
        }
        LedgerBackend::Kv => commit_in_kv(&queue, config.limits, new_task, prepared.now, commit_id).await,
    };
    let committed = match committed {
        Ok(committed) => committed,
        Err(e) => {
            // Nothing was stored under the key: let a retry with it start afresh.
            if !matches!(e, AdmitError::Uncertain(_)) {
                release(&queue, idem.as_deref()).await;
            }
            return Err(e);
        }
    };
    let admitted = wait_if_due(&queue, &user, &task_id, committed.slot, committed.landed).await?;
    let task = Task { task_id, user_id: user_id.to_string(), slot: committed.slot, placement: admitted.placement };
    Ok(Outcome::Admitted { task, recent: committed.recent, now: admitted.now })
}

/// Best effort: a reservation left behind expires by itself within seconds.
async fn release(queue: &Queue<'_>, idem: Option<&str>) {
    if let Some(idem) = idem {
        let _ = queue.release(idem).await;
    }
}

/// The `redis` ledger backend: `admit.lua` compares and sets the ledger and files the task
/// in one step, so a landed write *is* the stored task.
struct ScriptLedger<'q, 't> {
    queue: &'q Queue<'q>,
    task: NewTask<'t>,
}

impl LedgerStore for ScriptLedger<'_, '_> {
    type Landed = Admitted;

    fn keep(&self, limits: Limits) -> usize {
        limits.history()
    }

    async fn compare_and_set(&mut self, expected: &Ledger, new: &Ledger, _seq: u64, slot: i64, retries: u32) -> Result<Swap<Admitted>, LedgerError> {
        self.task.slot = slot;
        let expected = (!expected.is_empty()).then(|| expected.encode());
        let check = LedgerCheck::CompareAndSet { expected: expected.as_deref(), new: &new.encode() };
        match self.queue.admit(&self.task, check, retries).await {
            Ok(Filed::Admitted(admitted)) => Ok(Swap::Landed(admitted)),
            Ok(Filed::Conflict { now, ledger }) => Ok(Swap::Conflict { current: Ledger::decode(ledger.as_deref())?, now: Some(now) }),
            // The commit point: if Redis did not answer, the script may still have run.
            Err(StoreError::Unavailable(e)) => Err(LedgerError::Unconfirmed(e)),
            Err(StoreError::Unexpected(e)) => Err(LedgerError::Corrupt(e)),
        }
    }

    async fn back_off(&mut self, attempt: u32) {
        if attempt > 1 {
            ledger::random_wait(REDIS_BACKOFF_CAP_MS).await;
        }
    }
}

/// The `kv` ledger backend: commit in the key-value store, then file the task.
async fn commit_in_kv(
    queue: &Queue<'_>,
    limits: Limits,
    mut task: NewTask<'_>,
    arrival: i64,
    commit_id: &str,
) -> Result<ledger::Committed<Admitted>, AdmitError> {
    let mut store = KvLedger::open(task.ledger_key)?;
    let seen = store.read()?;
    let committed = ledger::commit(&mut store, limits, seen, arrival, commit_id).await?;
    task.slot = committed.slot;
    let admitted = match queue.admit(&task, LedgerCheck::Committed, committed.retries).await {
        Ok(Filed::Admitted(admitted)) => admitted,
        Ok(Filed::Conflict { .. }) => return Err(AdmitError::Internal("admit answered conflict without a check".to_string())),
        Err(StoreError::Unavailable(e)) => return Err(AdmitError::Uncertain(e)),
        Err(e) => return Err(e.into()),
    };
    Ok(ledger::Committed { slot: committed.slot, recent: committed.recent, retries: committed.retries, landed: admitted })
}

/// A task filed as queued although its slot has come (the user's previous task ran a few
/// ms late): wait briefly for it to run, so the answer is 200 rather than a 202 for a task
/// that runs almost at once.
async fn wait_if_due(queue: &Queue<'_>, user: &UserKey, task_id: &str, slot: i64, mut admitted: Admitted) -> Result<Admitted, AdmitError> {
    print_log(&admitted.ran);
    let mut waits = 0;
    while let Placement::Queued { .. } = admitted.placement {
        if slot > admitted.now || waits == INLINE_WAIT_STEPS {
            break;
        }
        spin_sdk::time::sleep(INLINE_WAIT_STEP).await;
        waits += 1;
        let poked = queue.poke(user, task_id).await?;
        print_log(&poked.ran);
        admitted = Admitted {
            placement: match poked.placement {
                Placement::Queued { .. } => admitted.placement,
                done => done,
            },
            ..poked
        };
    }
    Ok(admitted)
}

/// The original task of a repeated request with the same Idempotency-Key, as it is now.
async fn replay(config: &Config, queue: &Queue<'_>, user: &UserKey, task_id: &str, now: i64, ledger: Option<&[u8]>) -> Result<Outcome, AdmitError> {
    let Some(record) = queue.task(task_id).await? else {
        return Err(AdmitError::Internal(format!("idempotency key names unknown task {task_id}")));
    };
    let placement = match record.completed_at {
        Some(completed_at) => Placement::Completed { completed_at },
        None => Placement::Queued { position: queue.position(user, task_id).await? },
    };
    let recent = match config.ledger {
        LedgerBackend::Redis => Ledger::decode(ledger)?.slots(),
        LedgerBackend::Kv => ledger::kv_recent(&config.keys.ledger(user))?,
    };
    let task = Task { task_id: task_id.to_string(), user_id: record.user_id, slot: record.slot, placement };
    Ok(Outcome::Replayed { task, recent, now })
}
