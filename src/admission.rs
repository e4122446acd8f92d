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
//! Concurrent admissions of one user in one instance (Spin 4 gives an instance up to 16
//! requests at once) commit together: while one of them commits, the others wait, and the
//! next commit carries all of them (`commit_together`). Many writers of one ledger then
//! become a few, which is what keeps a hot user from drowning in compare-and-set conflicts.
//!
//! With the `kv` ledger, the ledger is committed in Spin's key-value store first
//! (`ledger::KvLedger`), then `admit.lua` files the task.

use crate::config::{Config, LedgerBackend};
use crate::drainer::print_log;
use crate::keys::{UserKey, new_task_id};
use crate::ledger::{self, KvLedger, Ledger, LedgerError, LedgerStore, Swap};
use crate::queue::{Admitted, Completion, Earlier, Filed, LedgerCheck, Placement, Queue, StoreError, TaskToFile};
use crate::slot::Limits;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// When a task's slot has come but the user's previous task ran a few ms late, admission
/// waits for it rather than answering 202 for a task that will run almost at once.
const INLINE_WAIT_STEP: Duration = Duration::from_millis(5);
const INLINE_WAIT_STEPS: u32 = 10;
/// How long a request waits for a concurrent one with the same Idempotency-Key.
const IDEMPOTENCY_WAIT: Duration = Duration::from_millis(1_500);
/// Back-off between compare-and-set attempts on the Redis ledger: a random wait up to
/// 2^attempt ms, capped, so that contending writers spread out.
const REDIS_BACKOFF_CAP_MS: u64 = 32;
/// How often an admission waiting for its group's commit looks for its result.
const GROUP_POLL: Duration = Duration::from_millis(1);

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

#[derive(Clone, Debug)]
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

pub async fn admit(config: &Config, user_id: &str, payload: Option<&str>, idempotency_key: Option<&str>) -> Result<Outcome, AdmitError> {
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
    // The ledger as read by `prepare` (the key-value backend reads its own).
    let seen = Ledger::decode(prepared.ledger.as_deref())?;
    let payload = payload.map(Rc::from);
    let member = Rc::new(Member { task_id: task_id.clone(), idempotency_key: idem.clone(), payload, arrival: prepared.now, seen, result: RefCell::new(None) });
    let committed = commit_together(&queue, config, &user, user_id, &ledger_key, member).await;
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
    let admitted = wait_if_due(&queue, &user, &task_id, committed.slot, committed.admitted).await?;
    let task = Task { task_id, user_id: user_id.to_string(), slot: committed.slot, placement: admitted.placement };
    Ok(Outcome::Admitted { task, recent: committed.recent, now: admitted.now })
}

/// One committed admission.
struct Committed {
    slot: i64,
    admitted: Admitted,
    /// The user's recent slots after the commit, for the rate-limit headers.
    recent: Vec<i64>,
}

/// An admission waiting to be committed with the others of its user in this instance.
struct Member {
    task_id: String,
    idempotency_key: Option<String>,
    payload: Option<Rc<str>>,
    /// The Redis clock when it began, and the ledger it read then.
    arrival: i64,
    seen: Ledger,
    result: RefCell<Option<Result<Committed, AdmitError>>>,
}

/// The admissions of one user (by ledger key) in this instance: those waiting, and whether
/// one of them is committing now.
#[derive(Default)]
struct Group {
    waiting: Vec<Rc<Member>>,
    committing: bool,
}

thread_local! {
    static GROUPS: RefCell<HashMap<String, Group>> = RefCell::new(HashMap::new());
}

/// Commits `member` together with whatever other admissions of its user wait in this
/// instance: if none is committing, it commits everyone waiting (itself included); if one
/// is, it waits for that commit to bring its result, or to end so it can lead the next.
async fn commit_together(queue: &Queue<'_>, config: &Config, user: &UserKey, user_id: &str, ledger_key: &str, member: Rc<Member>) -> Result<Committed, AdmitError> {
    GROUPS.with_borrow_mut(|groups| groups.entry(ledger_key.to_string()).or_default().waiting.push(member.clone()));
    loop {
        if let Some(result) = member.result.borrow_mut().take() {
            return result;
        }
        let batch = GROUPS.with_borrow_mut(|groups| {
            let group = groups.entry(ledger_key.to_string()).or_default();
            if group.committing {
                return None;
            }
            group.committing = true;
            Some(std::mem::take(&mut group.waiting))
        });
        match batch {
            Some(batch) => {
                let mut batch = BatchGuard { ledger_key, members: batch, delivered: false };
                let result = commit_batch(queue, config, user, user_id, ledger_key, &mut batch.members).await;
                batch.deliver(result);
            }
            // Requests are separate component-model tasks, and waking one from another needs
            // wit-bindgen's `inter-task-wakeup` (without it, a cross-task wake traps the
            // instance): so wait on the host's clock and look again.
            None => spin_sdk::time::sleep(GROUP_POLL).await,
        }
    }
}

/// A batch being committed. However the commit ends, even if the request leading it is
/// dropped halfway, every member gets an answer and the group is handed on.
struct BatchGuard<'k> {
    ledger_key: &'k str,
    members: Vec<Rc<Member>>,
    delivered: bool,
}

impl BatchGuard<'_> {
    fn deliver(&mut self, result: Result<Vec<Committed>, AdmitError>) {
        match result {
            Ok(committed) => {
                for (member, committed) in self.members.iter().zip(committed) {
                    *member.result.borrow_mut() = Some(Ok(committed));
                }
            }
            Err(e) => {
                for member in &self.members {
                    *member.result.borrow_mut() = Some(Err(e.clone()));
                }
            }
        }
        self.delivered = true;
    }
}

impl Drop for BatchGuard<'_> {
    fn drop(&mut self) {
        if !self.delivered {
            let abandoned = AdmitError::Uncertain("the request committing this admission was cancelled".to_string());
            self.deliver(Err(abandoned));
        }
        // Hand the group on: one of those that came in meanwhile commits next.
        GROUPS.with_borrow_mut(|groups| {
            if let Some(group) = groups.get_mut(self.ledger_key) {
                group.committing = false;
                if group.waiting.is_empty() {
                    groups.remove(self.ledger_key);
                }
            }
        });
    }
}

/// Commits a batch in arrival order: in the admission script, from the newest ledger any
/// of its members read (`redis`), or in the key-value store and then the script (`kv`).
async fn commit_batch(
    queue: &Queue<'_>,
    config: &Config,
    user: &UserKey,
    user_id: &str,
    ledger_key: &str,
    members: &mut [Rc<Member>],
) -> Result<Vec<Committed>, AdmitError> {
    members.sort_by_key(|m| m.arrival);
    // A 48-bit prefix of the task id tags each ledger entry.
    let arrivals: Vec<(i64, &str)> = members.iter().map(|m| (m.arrival, &m.task_id[..12])).collect();
    // Slots are filled in by the commit that decides them.
    let mut tasks: Vec<TaskToFile> = members
        .iter()
        .map(|m| TaskToFile { task_id: m.task_id.clone(), slot: 0, idempotency_key: m.idempotency_key.clone(), payload: m.payload.clone() })
        .collect();
    let (slots, recent, (placements, now, ran)) = match config.ledger {
        LedgerBackend::Redis => {
            let seen = members.iter().map(|m| &m.seen).max_by_key(|l| l.seq()).cloned().unwrap_or_default();
            let mut store = ScriptLedger { queue, user, user_id, ledger_key, tasks };
            let committed = ledger::commit(&mut store, config.limits, seen, &arrivals).await?;
            (committed.slots, committed.recent, committed.landed)
        }
        LedgerBackend::Kv => {
            let mut store = KvLedger::open(ledger_key)?;
            let seen = store.read()?;
            let committed = ledger::commit(&mut store, config.limits, seen, &arrivals).await?;
            for (task, slot) in tasks.iter_mut().zip(&committed.slots) {
                task.slot = *slot;
            }
            let filed = match queue.admit(user, user_id, ledger_key, &tasks, LedgerCheck::Committed, committed.retries).await {
                Ok(Filed::Admitted { placements, now, ran }) => (placements, now, ran),
                Ok(Filed::Conflict { .. }) => return Err(AdmitError::Internal("admit answered conflict without a check".to_string())),
                // The commit point: if Redis did not answer, the script may still have run.
                Err(StoreError::Unavailable(e)) => return Err(AdmitError::Uncertain(e)),
                Err(e) => return Err(e.into()),
            };
            (committed.slots, committed.recent, filed)
        }
    };
    print_log(&ran);
    Ok(slots
        .into_iter()
        .zip(placements)
        .map(|(slot, placement)| Committed { slot, admitted: Admitted { placement, now, ran: Vec::new() }, recent: recent.clone() })
        .collect())
}

/// Best effort: a reservation left behind expires by itself within seconds.
async fn release(queue: &Queue<'_>, idem: Option<&str>) {
    if let Some(idem) = idem {
        let _ = queue.release(idem).await;
    }
}

/// The `redis` ledger backend: `admit.lua` compares and sets the ledger and files the
/// tasks in one step, so a landed write *is* the stored tasks.
struct ScriptLedger<'q> {
    queue: &'q Queue<'q>,
    user: &'q UserKey,
    user_id: &'q str,
    ledger_key: &'q str,
    tasks: Vec<TaskToFile>,
}

impl LedgerStore for ScriptLedger<'_> {
    /// Each task's placement, the Redis clock, and the tasks the call ran.
    type Landed = (Vec<Placement>, i64, Vec<Completion>);

    fn keep(&self, limits: Limits) -> usize {
        limits.history()
    }

    async fn compare_and_set(&mut self, expected: &Ledger, new: &Ledger, slots: &[i64], retries: u32) -> Result<Swap<Self::Landed>, LedgerError> {
        for (task, slot) in self.tasks.iter_mut().zip(slots) {
            task.slot = *slot;
        }
        let expected = (!expected.is_empty()).then(|| expected.encode());
        let check = LedgerCheck::CompareAndSet { expected: expected.as_deref(), new: &new.encode() };
        match self.queue.admit(self.user, self.user_id, self.ledger_key, &self.tasks, check, retries).await {
            Ok(Filed::Admitted { placements, now, ran }) => Ok(Swap::Landed((placements, now, ran))),
            Ok(Filed::Conflict { now, ledger }) => Ok(Swap::Conflict { current: Ledger::decode(ledger.as_deref())?, now: Some(now) }),
            // The commit point: if Redis did not answer, the script may still have run.
            Err(StoreError::Unavailable(e)) => Err(LedgerError::Unconfirmed(e)),
            Err(StoreError::Unexpected(e)) => Err(LedgerError::Corrupt(e)),
        }
    }

    async fn back_off(&mut self, attempt: u32) {
        ledger::random_wait((1u64 << attempt.min(6)).min(REDIS_BACKOFF_CAP_MS)).await;
    }
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
    let placement = match (record.completed_at, record.cancelled_at) {
        (Some(completed_at), _) => Placement::Completed { completed_at },
        (None, Some(cancelled_at)) => Placement::Cancelled { cancelled_at },
        (None, None) => Placement::Queued { position: queue.position(user, task_id).await? },
    };
    let recent = ledger::recent_slots(config.ledger, &config.keys.ledger(user), ledger)?;
    let task = Task { task_id: task_id.to_string(), user_id: record.user_id, slot: record.slot, placement };
    Ok(Outcome::Replayed { task, recent, now })
}
