//! Admission: from a validated request to a stored task, as an `Outcome` (HTTP turns
//! outcomes into responses in `api.rs`).
//!
//! With the default `redis` ledger an admission is **one round trip**: `admit.lua` reads the
//! Redis clock, the Idempotency-Key, the user's backlog and ledger, gives the slot by the
//! rule, writes the new ledger and files the task (running it at once if its slot is now,
//! waking the drainer if nobody leads), all in one atomic step. Being one script, it needs
//! no compare-and-set and cannot conflict with another admission of the user, on any
//! replica.
//!
//! With the `kv` ledger (Spin's key-value store), the ledger is committed there with
//! compare-and-swap (`ledger::KvLedger`) between two scripts: `prepare.lua` (clock, backlog,
//! Idempotency-Key) and `file.lua` (files the tasks). Concurrent admissions of one user in
//! one instance (Spin 4 gives an instance up to 16 requests at once) commit together: while
//! one of them commits, the others wait, and the next commit carries all of them
//! (`commit_together`). Many writers of one ledger then become a few, which is what keeps a
//! hot user from drowning in compare-and-swap conflicts.

use crate::config::{Config, LedgerBackend};
use crate::deadline::SpinClock;
use crate::keys::{LaneKey, UserKey};
use crate::kv_ledger::{self, KvLedger};
use crate::ledger::{self, Arrival, Ledger, LedgerError};
use crate::log::print_log;
use crate::policy::Policy;
use crate::queue::new_task_id;
use crate::queue::{Admission, AdmitPolicy, Admitted, Earlier, Filed, Placement, Queue, StoreError, TaskToFile};
use crate::scripts;
use crate::slot::{Spent, Window};
use serde_json::value::RawValue;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use task_core::clock::Clock;
use task_core::user::UserId;

/// When a task's slot has come but the lane's previous task ran a few ms late, admission
/// waits for it rather than answering 202 for a task that will run almost at once.
const INLINE_WAIT_STEP: Duration = Duration::from_millis(5);
const INLINE_WAIT_STEPS: u32 = 10;
/// How long a request waits for a concurrent one with the same Idempotency-Key.
const IDEMPOTENCY_WAIT: Duration = Duration::from_millis(1_500);
/// How often an admission waiting for its group's commit looks for its result.
const GROUP_POLL: Duration = Duration::from_millis(1);

/// A validated request for a new task. Its kind is one the configuration defines.
pub struct NewTask<'a> {
    pub user_id: &'a UserId,
    pub kind: &'a str,
    pub cost: u32,
    pub payload: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
}

/// A task as the API shows it.
pub struct Task {
    pub task_id: String,
    pub user_id: String,
    pub kind: String,
    pub cost: u32,
    pub slot: i64,
    pub placement: Placement,
}

/// The lane's state after an answer, for the rate-limit fields: its recent slots and costs,
/// the user's tier that chose the policy (`None`: the built-in one), and the Redis clock.
pub struct LaneNow {
    pub recent: Vec<Spent>,
    pub tier: Option<String>,
    pub now: i64,
}

pub enum Outcome {
    /// A new task was stored (and run, if its slot was now).
    Admitted { task: Task, lane: LaneNow },
    /// The Idempotency-Key named an earlier task: that one, as it is now.
    Replayed { task: Task, lane: LaneNow },
    /// The lane's queue is full (`max_backlog`).
    BacklogFull,
    /// The task costs more than `window` of the user's policy for its kind holds: it could
    /// never run, so nothing was stored.
    TooCostly { window: Window, tier: Option<String> },
    /// A concurrent request with the same Idempotency-Key is still being admitted.
    KeyInUse,
    /// The Idempotency-Key named an earlier task with another kind, cost or payload
    /// (draft-ietf-httpapi-idempotency-key-header §2.7: a 422, not the earlier task).
    KeyReused,
}

#[derive(Clone, Debug)]
pub enum AdmitError {
    /// Redis or the key-value store failed before anything was stored.
    Unavailable(String),
    /// Redis did not answer the call that stores the task: it may or may not have run.
    Uncertain(String),
    /// Too much contention on the lane's ledger to commit in time; nothing was stored.
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
            LedgerError::Contended => AdmitError::Contended,
            LedgerError::Corrupt(e) => AdmitError::Internal(e),
        }
    }
}

pub async fn admit(config: &Config, new: &NewTask<'_>) -> Result<Outcome, AdmitError> {
    let queue = Queue::connect(config).await?;
    let user = UserKey::new(new.user_id);
    let lane = LaneKey::new(&user, new.kind);
    let overrides: Vec<(&str, &Policy)> = config.policies.overrides(new.kind).collect();
    let request = Request {
        idem: new.idempotency_key.map(|k| config.keys.idempotency(&user, k)),
        ledger_key: config.keys.ledger(&lane),
        // The tier is read only where it can change the policy.
        tier_key: (!overrides.is_empty()).then(|| config.keys.tier(&user)),
        lane,
        user,
        new,
        overrides,
    };
    let clock = SpinClock::default();
    match config.ledger {
        LedgerBackend::Redis => admit_in_one_script(config, &queue, &request, &clock).await,
        LedgerBackend::Kv => admit_with_kv(config, &queue, &request, &clock).await,
    }
}

/// What both ledger backends admit: a validated request and its keys.
struct Request<'a> {
    user: UserKey,
    lane: LaneKey,
    new: &'a NewTask<'a>,
    ledger_key: String,
    /// The key of the Idempotency-Key record, if the request has one.
    idem: Option<String>,
    /// The user's tier key, when a tier overrides the kind's policy.
    tier_key: Option<String>,
    /// The tiers that override the kind's policy.
    overrides: Vec<(&'a str, &'a Policy)>,
}

impl Request<'_> {
    /// The kind's policy for the user's `tier` (the kind is known: the API checked it).
    fn policy<'c>(&self, config: &'c Config, tier: Option<&str>) -> Result<&'c Policy, AdmitError> {
        config
            .policies
            .resolve(self.new.kind, tier)
            .ok_or_else(|| AdmitError::Internal(format!("no policy for kind {:?}", self.new.kind)))
    }
}

/// The `redis` ledger: the whole admission is `admit.lua`.
async fn admit_in_one_script(
    config: &Config,
    queue: &Queue<'_>,
    request: &Request<'_>,
    clock: &impl Clock,
) -> Result<Outcome, AdmitError> {
    let Request { lane, new, ledger_key, idem, .. } = request;
    let (keep, keep_ms) = config.policies.lane_history(new.kind);
    let policy = AdmitPolicy {
        kind: new.kind,
        cost: new.cost,
        keep,
        keep_ms,
        tier_key: request.tier_key.clone(),
        spec: request.policy(config, None)?.spec(),
        overrides: request.overrides.iter().map(|(tier, p)| (*tier, p.spec())).collect(),
    };
    let task_id = new_task_id();
    let started = clock.now();
    let admit = scripts::Admit {
        lane,
        user_id: new.user_id,
        ledger_key,
        idempotency_key: idem.as_deref(),
        max_backlog: config.max_backlog,
        task_id: &task_id,
        tag: ledger_tag(&task_id),
        payload: new.payload,
        policy: &policy,
    };
    loop {
        // The commit point: if Redis did not answer, the script may still have run.
        let admission = match queue.run(&admit).await {
            Ok(admission) => admission,
            Err(StoreError::Unavailable(e)) => return Err(AdmitError::Uncertain(e)),
            Err(e) => return Err(e.into()),
        };
        match admission {
            Admission::Admitted { slot, ledger, tier, filed } => {
                let recent = Ledger::decode(Some(&ledger))?.spent();
                let admitted = wait_if_due(queue, clock, lane, &task_id, slot, filed).await?;
                let task = new_task(new, task_id, slot, admitted.placement);
                return Ok(Outcome::Admitted { task, lane: LaneNow { recent, tier, now: admitted.now } });
            }
            Admission::BacklogFull => return Ok(Outcome::BacklogFull),
            Admission::Costly { tier, quota, window_ms } => {
                return Ok(Outcome::TooCostly { window: Window { quota, window_ms }, tier });
            }
            Admission::Earlier { earlier: Earlier::Task(earlier), now, ledger, tier } => {
                return replay(config, queue, request, &earlier, now, ledger.as_deref(), tier).await;
            }
            // Only a `kv` admission reserves a key ('pending'), e.g. on a replica configured so.
            Admission::Earlier { earlier: Earlier::Pending, .. } if clock.since(started) < IDEMPOTENCY_WAIT => {
                clock.sleep(INLINE_WAIT_STEP).await
            }
            Admission::Earlier { .. } => return Ok(Outcome::KeyInUse),
        }
    }
}

fn new_task(new: &NewTask<'_>, task_id: String, slot: i64, placement: Placement) -> Task {
    Task { task_id, user_id: new.user_id.to_string(), kind: new.kind.to_string(), cost: new.cost, slot, placement }
}

/// The 48-bit prefix of a task id that tags its ledger entry (it only has to differ from
/// the entries of admissions racing it).
fn ledger_tag(task_id: &str) -> &str {
    &task_id[..12]
}

/// The `kv` ledger: prepare, commit the ledger in the key-value store (together with the
/// lane's other admissions in this instance), then file.
async fn admit_with_kv(
    config: &Config,
    queue: &Queue<'_>,
    request: &Request<'_>,
    clock: &impl Clock,
) -> Result<Outcome, AdmitError> {
    let Request { lane, new, idem, .. } = request;
    let started = clock.now();
    let prepared = loop {
        let prepared = queue
            .run(&scripts::Prepare {
                lane,
                idempotency_key: idem.as_deref(),
                max_backlog: config.max_backlog,
                tier_key: request.tier_key.as_deref(),
            })
            .await?;
        match &prepared.earlier {
            Earlier::None => break prepared,
            Earlier::Task(task_id) => {
                return replay(config, queue, request, task_id, prepared.now, None, prepared.tier.clone()).await;
            }
            Earlier::Pending if clock.since(started) < IDEMPOTENCY_WAIT => clock.sleep(INLINE_WAIT_STEP).await,
            Earlier::Pending => return Ok(Outcome::KeyInUse),
        }
    };
    if prepared.backlog_full {
        return Ok(Outcome::BacklogFull);
    }
    let policy = request.policy(config, prepared.tier.as_deref())?;
    if let Some(window) = policy.windows().iter().find(|w| new.cost > w.quota) {
        release(queue, idem.as_deref()).await;
        return Ok(Outcome::TooCostly { window: *window, tier: prepared.tier });
    }
    let task_id = new_task_id();
    let member = Rc::new(Member {
        task_id: task_id.clone(),
        idempotency_key: idem.clone(),
        payload: new.payload.map(Rc::from),
        arrival: prepared.now,
        cost: new.cost,
        windows: Rc::from(policy.windows()),
        spec: Rc::from(policy.spec()),
        result: RefCell::new(None),
    });
    let committed = match commit_together(queue, clock, config, request, member).await {
        Ok(committed) => committed,
        Err(e) => {
            // Nothing was stored under the key: let a retry with it start afresh.
            if !matches!(e, AdmitError::Uncertain(_)) {
                release(queue, idem.as_deref()).await;
            }
            return Err(e);
        }
    };
    let admitted = wait_if_due(queue, clock, lane, &task_id, committed.slot, committed.admitted).await?;
    let task = new_task(new, task_id, committed.slot, admitted.placement);
    Ok(Outcome::Admitted { task, lane: LaneNow { recent: committed.recent, tier: prepared.tier, now: admitted.now } })
}

/// One committed admission.
struct Committed {
    slot: i64,
    admitted: Admitted,
    /// The lane's recent slots after the commit, for the rate-limit headers.
    recent: Vec<Spent>,
}

/// An admission waiting to be committed with the others of its lane in this instance.
struct Member {
    task_id: String,
    idempotency_key: Option<String>,
    payload: Option<Rc<str>>,
    /// The Redis clock when it began.
    arrival: i64,
    cost: u32,
    /// Its policy (the user's tier when it began chose it).
    windows: Rc<[Window]>,
    spec: Rc<str>,
    result: RefCell<Option<Result<Committed, AdmitError>>>,
}

/// The admissions of one lane (by ledger key) in this instance: those waiting, and whether
/// one of them is committing now.
#[derive(Default)]
struct Group {
    waiting: Vec<Rc<Member>>,
    committing: bool,
}

thread_local! {
    static GROUPS: RefCell<HashMap<String, Group>> = RefCell::new(HashMap::new());
}

/// Commits `member` together with whatever other admissions of its lane wait in this
/// instance: if none is committing, it commits everyone waiting (itself included); if one
/// is, it waits for that commit to bring its result, or to end so it can lead the next.
async fn commit_together(
    queue: &Queue<'_>,
    clock: &impl Clock,
    config: &Config,
    request: &Request<'_>,
    member: Rc<Member>,
) -> Result<Committed, AdmitError> {
    let ledger_key = request.ledger_key.as_str();
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
                let result = commit_batch(queue, clock, config, request, &mut batch.members).await;
                batch.deliver(result);
            }
            // Requests are separate component-model tasks, and waking one from another needs
            // wit-bindgen's `inter-task-wakeup` (without it, a cross-task wake traps the
            // instance): so wait on the host's clock and look again.
            None => clock.sleep(GROUP_POLL).await,
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

/// Commits a batch in arrival order in the key-value store, then files its tasks.
async fn commit_batch(
    queue: &Queue<'_>,
    clock: &impl Clock,
    config: &Config,
    request: &Request<'_>,
    members: &mut [Rc<Member>],
) -> Result<Vec<Committed>, AdmitError> {
    members.sort_by_key(|m| m.arrival);
    let arrivals: Vec<Arrival> = members
        .iter()
        .map(|m| Arrival { at: m.arrival, tag: ledger_tag(&m.task_id), cost: m.cost, windows: &m.windows })
        .collect();
    let (history, keep_ms) = config.policies.lane_history(request.new.kind);
    let mut store = KvLedger::open(&request.ledger_key)?;
    let seen = store.read()?;
    let committed = ledger::commit(&mut store, clock, history as usize, seen, &arrivals).await?;
    let tasks: Vec<TaskToFile> = members
        .iter()
        .zip(&committed.slots)
        .map(|(m, slot)| TaskToFile {
            task_id: m.task_id.clone(),
            slot: *slot,
            idempotency_key: m.idempotency_key.clone(),
            payload: m.payload.clone(),
            cost: m.cost,
            spec: m.spec.clone(),
        })
        .collect();
    let (lane, kind) = (&request.lane, request.new.kind);
    let file = scripts::File {
        lane,
        user_id: request.new.user_id,
        kind,
        ledger_key: &request.ledger_key,
        keep_ms,
        tasks: &tasks,
        cas_retries: committed.retries,
    };
    let filed = queue.run(&file).await;
    let Filed { placements, now, ran } = match filed {
        Ok(filed) => filed,
        // The commit point: if Redis did not answer, the script may still have run.
        Err(StoreError::Unavailable(e)) => return Err(AdmitError::Uncertain(e)),
        Err(e) => return Err(e.into()),
    };
    print_log(&ran);
    let recent = committed.recent;
    Ok(committed
        .slots
        .into_iter()
        .zip(placements)
        .map(|(slot, placement)| Committed {
            slot,
            admitted: Admitted { placement, now, ran: Vec::new() },
            recent: recent.clone(),
        })
        .collect())
}

/// Best effort: a reservation left behind expires by itself within seconds.
async fn release(queue: &Queue<'_>, idem: Option<&str>) {
    if let Some(idem) = idem {
        let _ = queue.run(&scripts::Release { idempotency_key: idem }).await;
    }
}

/// A task filed as queued although its slot has come (the lane's previous task ran a few
/// ms late): wait briefly for it to run, so the answer is 200 rather than a 202 for a task
/// that runs almost at once.
async fn wait_if_due(
    queue: &Queue<'_>,
    clock: &impl Clock,
    lane: &LaneKey,
    task_id: &str,
    slot: i64,
    mut admitted: Admitted,
) -> Result<Admitted, AdmitError> {
    print_log(&admitted.ran);
    let mut waits = 0;
    while let Placement::Queued { .. } = admitted.placement {
        if slot > admitted.now || waits == INLINE_WAIT_STEPS {
            break;
        }
        clock.sleep(INLINE_WAIT_STEP).await;
        waits += 1;
        let poked = queue.run(&scripts::Poke { lane, task_id }).await?;
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

/// The original task of a repeated request with the same Idempotency-Key, as it is now,
/// with the rate-limit state of the lane this request named (`ledger`: as `admit.lua` read
/// it).
async fn replay(
    config: &Config,
    queue: &Queue<'_>,
    request: &Request<'_>,
    task_id: &str,
    now: i64,
    ledger: Option<&[u8]>,
    tier: Option<String>,
) -> Result<Outcome, AdmitError> {
    let Some(record) = queue.run(&scripts::ReadTask { task_id, count: false }).await? else {
        return Err(AdmitError::Internal(format!("idempotency key names unknown task {task_id}")));
    };
    let new = request.new;
    if record.kind != new.kind || record.cost != new.cost || record.payload.as_deref().map(RawValue::get) != new.payload
    {
        return Ok(Outcome::KeyReused);
    }
    let placement = match (record.completed_at, record.cancelled_at) {
        (Some(completed_at), _) => Placement::Completed { completed_at },
        (None, Some(cancelled_at)) => Placement::Cancelled { cancelled_at },
        (None, None) => Placement::Queued {
            position: queue
                .run(&scripts::Position { lane: &LaneKey::new(&request.user, &record.kind), task_id })
                .await?,
        },
    };
    let recent = kv_ledger::recent_slots(config.ledger, &request.ledger_key, ledger)?;
    let task = Task {
        task_id: task_id.to_string(),
        user_id: record.user_id,
        kind: record.kind,
        cost: record.cost,
        slot: record.slot,
        placement,
    };
    Ok(Outcome::Replayed { task, lane: LaneNow { recent, tier, now } })
}
