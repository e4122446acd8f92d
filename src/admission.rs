//! Admission: from a validated request to a stored task, as an `Outcome` (HTTP turns
//! outcomes into responses in `http::answer`).
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
use crate::ledger::{self, Arrival, Ledger, LedgerError, LedgerStore};
use crate::log::print_log;
use crate::policy::Policy;
use crate::queue::new_task_id;
use crate::queue::{
    Admission, AdmitPolicy, Admitted, Earlier, Filed, Placement, Prepared, Queue, StoreError, TaskRecord, TaskToFile,
};
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
    /// A new task was stored (and run, if its slot was now). `wake_unheard`: it waits for the
    /// drainers, whose wake-up reached no replica: the handler publishes again after answering.
    /// `started`: a task to deliver whose first attempt started (`Placement::Running`); the
    /// handler makes it after answering.
    Admitted { task: Task, lane: LaneNow, wake_unheard: bool, started: Option<scripts::Claim> },
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
    let request = Request::new(config, new, new_task_id());
    let clock = SpinClock::default();
    match config.ledger {
        LedgerBackend::Redis => admit_in_one_script(config, &queue, &request, &clock).await,
        LedgerBackend::Kv => admit_with_kv(config, &queue, &request, &clock).await,
    }
}

/// What admission asks of its stores: the scripts it runs on Redis and, with the `kv`
/// ledger, the lane's ledger in the key-value store. The queue and Spin's key-value store,
/// or a script of answers in tests.
#[allow(async_fn_in_trait)]
pub trait AdmitStore {
    type Ledger: LedgerStore;
    /// `admit.lua`: the whole admission with the `redis` ledger.
    async fn admit(&self, admit: &scripts::Admit<'_>) -> Result<Admission, StoreError>;
    /// `prepare.lua`: the Redis clock, the backlog and the Idempotency-Key (`kv` ledger).
    async fn prepare(&self, prepare: &scripts::Prepare<'_>) -> Result<Prepared, StoreError>;
    /// `file.lua`: files a committed batch (`kv` ledger).
    async fn file(&self, file: &scripts::File<'_>) -> Result<Filed, StoreError>;
    /// Drops an Idempotency-Key's reservation.
    async fn release(&self, idempotency_key: &str) -> Result<(), StoreError>;
    /// Runs the lane's due tasks; where `task_id` stands now.
    async fn poke(&self, lane: &LaneKey, task_id: &str) -> Result<Admitted, StoreError>;
    async fn read_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError>;
    /// A queued task's place in its lane.
    async fn position(&self, lane: &LaneKey, task_id: &str) -> Result<i64, StoreError>;
    /// The lane's `kv` ledger, and its value as stored now.
    fn open_ledger(&self, key: &str) -> Result<(Self::Ledger, Ledger), LedgerError>;
    /// The lane's recent slots (`kv_ledger::recent_slots`).
    fn recent_slots(
        &self,
        backend: LedgerBackend,
        key: &str,
        from_redis: Option<&[u8]>,
    ) -> Result<Vec<Spent>, LedgerError>;
}

impl AdmitStore for Queue<'_> {
    type Ledger = KvLedger;

    async fn admit(&self, admit: &scripts::Admit<'_>) -> Result<Admission, StoreError> {
        self.run(admit).await
    }

    async fn prepare(&self, prepare: &scripts::Prepare<'_>) -> Result<Prepared, StoreError> {
        self.run(prepare).await
    }

    async fn file(&self, file: &scripts::File<'_>) -> Result<Filed, StoreError> {
        self.run(file).await
    }

    async fn release(&self, idempotency_key: &str) -> Result<(), StoreError> {
        self.run(&scripts::UnitScript::release(idempotency_key)).await
    }

    async fn poke(&self, lane: &LaneKey, task_id: &str) -> Result<Admitted, StoreError> {
        self.run(&scripts::Poke { lane, task_id }).await
    }

    async fn read_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.run(&scripts::ReadTask { task_id, count: false }).await
    }

    async fn position(&self, lane: &LaneKey, task_id: &str) -> Result<i64, StoreError> {
        self.run(&scripts::Position { lane, task_id }).await
    }

    fn open_ledger(&self, key: &str) -> Result<(KvLedger, Ledger), LedgerError> {
        let mut ledger = KvLedger::open(key)?;
        let seen = ledger.read()?;
        Ok((ledger, seen))
    }

    fn recent_slots(
        &self,
        backend: LedgerBackend,
        key: &str,
        from_redis: Option<&[u8]>,
    ) -> Result<Vec<Spent>, LedgerError> {
        kv_ledger::recent_slots(backend, key, from_redis)
    }
}

/// What both ledger backends admit: a validated request, its keys and its task's id.
struct Request<'a> {
    user: UserKey,
    lane: LaneKey,
    new: &'a NewTask<'a>,
    task_id: String,
    ledger_key: String,
    /// The key of the Idempotency-Key record, if the request has one.
    idem: Option<String>,
    /// The user's tier key, when a tier overrides the kind's policy.
    tier_key: Option<String>,
    /// The tiers that override the kind's policy.
    overrides: Vec<(&'a str, &'a Policy)>,
}

impl<'a> Request<'a> {
    fn new(config: &'a Config, new: &'a NewTask<'a>, task_id: String) -> Request<'a> {
        let user = UserKey::new(new.user_id);
        let lane = LaneKey::new(&user, new.kind);
        let overrides: Vec<(&str, &Policy)> = config.policies.overrides(new.kind).collect();
        Request {
            idem: new.idempotency_key.map(|k| config.keys.idempotency(&user, k)),
            ledger_key: config.keys.ledger(&lane),
            // The tier is read only where it can change the policy.
            tier_key: (!overrides.is_empty()).then(|| config.keys.tier(&user)),
            lane,
            user,
            new,
            task_id,
            overrides,
        }
    }

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
    store: &impl AdmitStore,
    request: &Request<'_>,
    clock: &impl Clock,
) -> Result<Outcome, AdmitError> {
    let Request { lane, new, ledger_key, idem, task_id, .. } = request;
    let (keep, keep_ms) = config.policies.lane_history(new.kind);
    let delivery = config.policies.delivery(new.kind).map(|d| d.spec());
    let policy = AdmitPolicy {
        kind: new.kind,
        cost: new.cost,
        keep,
        keep_ms,
        tier_key: request.tier_key.clone(),
        spec: request.policy(config, None)?.spec(),
        delivery: delivery.as_deref(),
        overrides: request.overrides.iter().map(|(tier, p)| (*tier, p.spec())).collect(),
    };
    let started = clock.now();
    let admit = scripts::Admit {
        lane,
        user_id: new.user_id,
        ledger_key,
        idempotency_key: idem.as_deref(),
        max_backlog: config.max_backlog,
        task_id,
        tag: ledger_tag(task_id),
        payload: new.payload,
        policy: &policy,
    };
    loop {
        // The commit point: if Redis did not answer, the script may still have run.
        let admission = match store.admit(&admit).await {
            Ok(admission) => admission,
            Err(StoreError::Unavailable(e)) => return Err(AdmitError::Uncertain(e)),
            Err(e) => return Err(e.into()),
        };
        match admission {
            Admission::Admitted { slot, ledger, tier, filed } => {
                let recent = Ledger::decode(Some(&ledger))?.spent();
                // A task to deliver is never run inline: it started (the handler delivers it)
                // or waits for the drainers. Nothing to wait for.
                let admitted = if delivery.is_some() {
                    print_log(&filed.ran);
                    filed
                } else {
                    wait_if_due(store, clock, lane, task_id, slot, filed).await?
                };
                let task = new_task(new, task_id.clone(), slot, admitted.placement);
                let lane = LaneNow { recent, tier, now: admitted.now };
                let (wake_unheard, started) = (admitted.wake_unheard, admitted.started);
                return Ok(Outcome::Admitted { task, lane, wake_unheard, started });
            }
            Admission::BacklogFull => return Ok(Outcome::BacklogFull),
            Admission::Costly { tier, quota, window_ms } => {
                return Ok(Outcome::TooCostly { window: Window { quota, window_ms }, tier });
            }
            Admission::Earlier { earlier: Earlier::Task(earlier), now, ledger, tier } => {
                return replay(config, store, request, &earlier, now, ledger.as_deref(), tier).await;
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
    store: &impl AdmitStore,
    request: &Request<'_>,
    clock: &impl Clock,
) -> Result<Outcome, AdmitError> {
    let Request { lane, new, idem, task_id, .. } = request;
    let started = clock.now();
    let prepared = loop {
        let prepared = store
            .prepare(&scripts::Prepare {
                lane,
                idempotency_key: idem.as_deref(),
                max_backlog: config.max_backlog,
                tier_key: request.tier_key.as_deref(),
            })
            .await?;
        match &prepared.earlier {
            Earlier::None => break prepared,
            Earlier::Task(earlier) => {
                return replay(config, store, request, earlier, prepared.now, None, prepared.tier.clone()).await;
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
        release(store, idem.as_deref()).await;
        return Ok(Outcome::TooCostly { window: *window, tier: prepared.tier });
    }
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
    let committed = match commit_together(store, clock, config, request, member).await {
        Ok(committed) => committed,
        Err(e) => {
            // Nothing was stored under the key: let a retry with it start afresh.
            if !matches!(e, AdmitError::Uncertain(_)) {
                release(store, idem.as_deref()).await;
            }
            return Err(e);
        }
    };
    let admitted = wait_if_due(store, clock, lane, task_id, committed.slot, committed.admitted).await?;
    let task = new_task(new, task_id.clone(), committed.slot, admitted.placement);
    let lane = LaneNow { recent: committed.recent, tier: prepared.tier, now: admitted.now };
    Ok(Outcome::Admitted { task, lane, wake_unheard: admitted.wake_unheard, started: None })
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
    store: &impl AdmitStore,
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
                let result = commit_batch(store, clock, config, request, &mut batch.members).await;
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
    store: &impl AdmitStore,
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
    let (mut ledger, seen) = store.open_ledger(&request.ledger_key)?;
    let committed = ledger::commit(&mut ledger, clock, history as usize, seen, &arrivals).await?;
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
    let filed = store.file(&file).await;
    // (The `kv` ledger never delivers, so it starts no attempt: config.rs.)
    let Filed { placements, now, ran, wake_unheard, .. } = match filed {
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
            admitted: Admitted { placement, now, ran: Vec::new(), wake_unheard, started: None },
            recent: recent.clone(),
        })
        .collect())
}

/// Best effort: a reservation left behind expires by itself within seconds.
async fn release(store: &impl AdmitStore, idem: Option<&str>) {
    if let Some(idem) = idem {
        let _ = store.release(idem).await;
    }
}

/// A task filed as queued although its slot has come (the lane's previous task ran a few
/// ms late): wait briefly for it to run, so the answer is 200 rather than a 202 for a task
/// that runs almost at once.
async fn wait_if_due(
    store: &impl AdmitStore,
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
        // The task is stored: a failed look is no reason to answer 503 (which says nothing
        // was, and invites a retry that stores it twice). Answer it as filed.
        let Ok(poked) = store.poke(lane, task_id).await else { break };
        print_log(&poked.ran);
        admitted = Admitted {
            placement: match poked.placement {
                Placement::Queued { .. } => admitted.placement,
                done => done,
            },
            wake_unheard: admitted.wake_unheard,
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
    store: &impl AdmitStore,
    request: &Request<'_>,
    task_id: &str,
    now: i64,
    ledger: Option<&[u8]>,
    tier: Option<String>,
) -> Result<Outcome, AdmitError> {
    let Some(record) = store.read_task(task_id).await? else {
        return Err(AdmitError::Internal(format!("idempotency key names unknown task {task_id}")));
    };
    let new = request.new;
    if record.kind != new.kind || record.cost != new.cost || record.payload.as_deref().map(RawValue::get) != new.payload
    {
        return Ok(Outcome::KeyReused);
    }
    let placement = match record {
        TaskRecord { completed_at: Some(completed_at), .. } => Placement::Completed { completed_at },
        TaskRecord { cancelled_at: Some(cancelled_at), .. } => Placement::Cancelled { cancelled_at },
        TaskRecord { failed_at: Some(failed_at), .. } => Placement::Failed { failed_at },
        TaskRecord { running_since: Some(since), .. } => Placement::Running { since },
        _ => Placement::Queued { position: store.position(&LaneKey::new(&request.user, &record.kind), task_id).await? },
    };
    let recent = store.recent_slots(config.ledger, &request.ledger_key, ledger)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Swap;
    use crate::policy::Policies;
    use std::collections::VecDeque;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use task_core::clock::{Manual, run_now};

    /// One answer of the fake store, in the order admission is to ask.
    enum Answer {
        Admit(Result<Admission, StoreError>),
        Prepare(Result<Prepared, StoreError>),
        File(Result<Filed, StoreError>),
        Poke(Result<Admitted, StoreError>),
        ReadTask(Option<TaskRecord>),
        Position(i64),
    }

    /// A store that answers from a script and records each call as a line (`file` also
    /// yields once first, so that other admissions run while a batch is being filed). Its
    /// `kv` ledger is kept in memory.
    struct Scripted {
        answers: RefCell<VecDeque<Answer>>,
        calls: RefCell<Vec<String>>,
        ledger: Rc<RefCell<Ledger>>,
        ledger_down: bool,
    }

    impl Scripted {
        fn new(answers: impl IntoIterator<Item = Answer>) -> Scripted {
            Scripted {
                answers: RefCell::new(answers.into_iter().collect()),
                calls: RefCell::new(Vec::new()),
                ledger: Rc::default(),
                ledger_down: false,
            }
        }

        fn next(&self, call: String) -> Answer {
            let answer = self.answers.borrow_mut().pop_front();
            answer.unwrap_or_else(|| panic!("{call}: the script ran out (after {:?})", self.calls.borrow()))
        }

        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }

        fn count(&self, prefix: &str) -> usize {
            self.calls.borrow().iter().filter(|c| c.starts_with(prefix)).count()
        }
    }

    fn unexpected(call: &str) -> ! {
        panic!("{call} was called where the script had another answer")
    }

    impl AdmitStore for Scripted {
        type Ledger = Memory;

        async fn admit(&self, admit: &scripts::Admit<'_>) -> Result<Admission, StoreError> {
            self.calls.borrow_mut().push(format!("admit {}", admit.task_id));
            match self.next("admit".into()) {
                Answer::Admit(answer) => answer,
                _ => unexpected("admit"),
            }
        }

        async fn prepare(&self, prepare: &scripts::Prepare<'_>) -> Result<Prepared, StoreError> {
            self.calls.borrow_mut().push(format!("prepare {:?}", prepare.idempotency_key));
            match self.next("prepare".into()) {
                Answer::Prepare(answer) => answer,
                _ => unexpected("prepare"),
            }
        }

        async fn file(&self, file: &scripts::File<'_>) -> Result<Filed, StoreError> {
            yield_once().await;
            let slots: Vec<i64> = file.tasks.iter().map(|t| t.slot).collect();
            self.calls.borrow_mut().push(format!("file {slots:?}"));
            match self.next("file".into()) {
                Answer::File(answer) => answer,
                _ => unexpected("file"),
            }
        }

        async fn release(&self, idempotency_key: &str) -> Result<(), StoreError> {
            self.calls.borrow_mut().push(format!("release {idempotency_key}"));
            Ok(())
        }

        async fn poke(&self, _lane: &LaneKey, task_id: &str) -> Result<Admitted, StoreError> {
            self.calls.borrow_mut().push(format!("poke {task_id}"));
            match self.next("poke".into()) {
                Answer::Poke(answer) => answer,
                _ => unexpected("poke"),
            }
        }

        async fn read_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
            self.calls.borrow_mut().push(format!("read {task_id}"));
            match self.next("read".into()) {
                Answer::ReadTask(answer) => Ok(answer),
                _ => unexpected("read_task"),
            }
        }

        async fn position(&self, lane: &LaneKey, task_id: &str) -> Result<i64, StoreError> {
            self.calls.borrow_mut().push(format!("position {} {task_id}", lane.0));
            match self.next("position".into()) {
                Answer::Position(answer) => Ok(answer),
                _ => unexpected("position"),
            }
        }

        fn open_ledger(&self, _key: &str) -> Result<(Memory, Ledger), LedgerError> {
            if self.ledger_down {
                return Err(LedgerError::Unavailable("key-value store down".to_string()));
            }
            Ok((Memory(self.ledger.clone()), self.ledger.borrow().clone()))
        }

        fn recent_slots(
            &self,
            _: LedgerBackend,
            _: &str,
            from_redis: Option<&[u8]>,
        ) -> Result<Vec<Spent>, LedgerError> {
            Ok(Ledger::decode(from_redis)?.spent())
        }
    }

    /// A `kv` ledger in memory, with a true compare-and-set.
    struct Memory(Rc<RefCell<Ledger>>);

    impl LedgerStore for Memory {
        fn keep(&self, history: usize) -> usize {
            history
        }

        async fn compare_and_set(&mut self, expected: &Ledger, new: &Ledger) -> Result<Swap, LedgerError> {
            let mut stored = self.0.borrow_mut();
            if *stored != *expected {
                return Ok(Swap::Conflict { current: stored.clone() });
            }
            *stored = new.clone();
            Ok(Swap::Landed)
        }

        fn back_off(&mut self, _attempt: u32) -> Duration {
            Duration::from_millis(1)
        }
    }

    /// Pending once, then ready: lets the other futures of a `join` run, as the host does
    /// between an instance's requests.
    async fn yield_once() {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                return Poll::Ready(());
            }
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// The manual clock, whose sleeps also yield once: an admission waiting for its group's
    /// commit lets the one committing go on.
    struct Yielding<'c>(&'c Manual);

    impl Clock for Yielding<'_> {
        fn now(&self) -> Duration {
            self.0.now()
        }

        async fn sleep(&self, duration: Duration) {
            self.0.sleep(duration).await;
            yield_once().await
        }
    }

    /// The `default` kind at 1 task/s and 20/min, and `big` that holds at most 2 units a second.
    fn config(ledger: LedgerBackend) -> Config {
        let policies =
            Policies::parse(r#"{"kinds": {"big": ["2/1s"]}}"#, Policy::legacy(1, 20)).unwrap_or_else(|e| panic!("{e}"));
        let mut config = Config::for_tests(policies, None);
        config.ledger = ledger;
        config
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn task<'a>(user_id: &'a UserId, idempotency_key: Option<&'a str>) -> NewTask<'a> {
        NewTask { user_id, kind: "default", cost: 1, payload: Some("[1]"), idempotency_key }
    }

    fn admit_redis(store: &Scripted, clock: &Manual, new: &NewTask<'_>) -> Result<Outcome, AdmitError> {
        let config = config(LedgerBackend::Redis);
        let request = Request::new(&config, new, "t1aaaaaaaaaaaaaaaaaaaaaa".to_string());
        run_now(admit_in_one_script(&config, store, &request, clock))
    }

    fn filed(placement: Placement, now: i64) -> Admitted {
        Admitted { placement, now, ran: Vec::new(), wake_unheard: false, started: None }
    }

    fn admitted(slot: i64, placement: Placement, now: i64) -> Answer {
        let ledger = Ledger::default().encode();
        Answer::Admit(Ok(Admission::Admitted { slot, ledger, tier: None, filed: filed(placement, now) }))
    }

    fn pending() -> Answer {
        Answer::Admit(Ok(Admission::Earlier { earlier: Earlier::Pending, now: 0, ledger: None, tier: None }))
    }

    const QUEUED: Placement = Placement::Queued { position: 1 };
    const DONE: Placement = Placement::Completed { completed_at: 1_000 };

    /// A placement as the tests compare it (`Placement` is not `PartialEq`).
    fn shown(placement: Placement) -> Result<String, String> {
        Ok(format!("{placement:?}"))
    }

    /// Where an outcome's task stands, or what the outcome is.
    fn placement(outcome: Result<Outcome, AdmitError>) -> Result<String, String> {
        match outcome {
            Ok(Outcome::Admitted { task, .. }) => shown(task.placement),
            Ok(Outcome::Replayed { task, .. }) => shown(task.placement),
            Ok(Outcome::BacklogFull) => Err("backlog full".to_string()),
            Ok(Outcome::TooCostly { window, .. }) => Err(format!("too costly for {}", window.quota)),
            Ok(Outcome::KeyInUse) => Err("key in use".to_string()),
            Ok(Outcome::KeyReused) => Err("key reused".to_string()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    #[test]
    fn a_key_whose_first_admission_is_pending_is_waited_for() {
        let (user, clock) = (alice(), Manual::new());
        let store = Scripted::new([pending(), pending(), admitted(1_000, DONE, 1_000)]);
        assert_eq!(placement(admit_redis(&store, &clock, &task(&user, Some("k")))), shown(DONE));
        assert_eq!(store.count("admit t1"), 3);
        assert_eq!((clock.sleeps(), clock.now()), (2, 2 * INLINE_WAIT_STEP));
    }

    #[test]
    fn a_key_pending_past_the_wait_is_in_use() {
        let (user, clock) = (alice(), Manual::new());
        let store = Scripted::new((0..1_000).map(|_| pending()));
        assert_eq!(placement(admit_redis(&store, &clock, &task(&user, Some("k")))), Err("key in use".to_string()));
        let steps = IDEMPOTENCY_WAIT.as_millis() / INLINE_WAIT_STEP.as_millis();
        assert_eq!((clock.sleeps() as u128, store.count("admit") as u128), (steps, steps + 1));
    }

    #[test]
    fn a_store_error_on_the_commit_point_is_uncertain_any_other_internal() {
        let user = alice();
        for (error, says) in [
            (StoreError::Unavailable("down".to_string()), "Uncertain(\"down\")"),
            (StoreError::Unexpected("odd".to_string()), "Internal(\"odd\")"),
        ] {
            let store = Scripted::new([Answer::Admit(Err(error))]);
            assert_eq!(placement(admit_redis(&store, &Manual::new(), &task(&user, None))), Err(says.to_string()));
        }
    }

    #[test]
    fn full_backlogs_and_costly_tasks_are_answered_as_such() {
        let user = alice();
        let store = Scripted::new([Answer::Admit(Ok(Admission::BacklogFull))]);
        assert_eq!(placement(admit_redis(&store, &Manual::new(), &task(&user, None))), Err("backlog full".to_string()));
        let costly = Admission::Costly { tier: None, quota: 2, window_ms: 1_000 };
        let store = Scripted::new([Answer::Admit(Ok(costly))]);
        let outcome = admit_redis(&store, &Manual::new(), &task(&user, None));
        assert_eq!(placement(outcome), Err("too costly for 2".to_string()));
    }

    /// A task filed as queued although its slot has come is poked every `INLINE_WAIT_STEP`
    /// until it ran, at most `INLINE_WAIT_STEPS` times (a failed poke ends the wait: the task
    /// is stored); one whose slot is ahead is not.
    #[test]
    fn a_due_task_is_waited_for_briefly_a_later_one_not_at_all() {
        let user = alice();
        let (clock, poke) = (Manual::new(), |p| Answer::Poke(Ok(filed(p, 1_005))));
        let store = Scripted::new([admitted(1_000, QUEUED, 1_000), poke(QUEUED), poke(DONE)]);
        assert_eq!(placement(admit_redis(&store, &clock, &task(&user, None))), shown(DONE));
        assert_eq!((store.count("poke"), clock.sleeps()), (2, 2));

        let clock = Manual::new();
        let store = Scripted::new([admitted(1_001, QUEUED, 1_000)]);
        assert_eq!(placement(admit_redis(&store, &clock, &task(&user, None))), shown(QUEUED));
        assert_eq!((store.count("poke"), clock.sleeps()), (0, 0));

        let clock = Manual::new();
        let down = Answer::Poke(Err(StoreError::Unavailable("down".to_string())));
        let store = Scripted::new([admitted(1_000, QUEUED, 1_000), down]);
        assert_eq!(placement(admit_redis(&store, &clock, &task(&user, None))), shown(QUEUED));

        let clock = Manual::new();
        let late = std::iter::repeat_with(|| poke(QUEUED)).take(INLINE_WAIT_STEPS as usize);
        let store = Scripted::new(std::iter::once(admitted(1_000, QUEUED, 1_000)).chain(late));
        assert_eq!(placement(admit_redis(&store, &clock, &task(&user, None))), shown(QUEUED));
        assert_eq!((store.count("poke"), clock.sleeps()), (INLINE_WAIT_STEPS as usize, INLINE_WAIT_STEPS));
    }

    fn record(cost: u32, completed_at: Option<i64>) -> TaskRecord {
        TaskRecord {
            user_id: "alice".to_string(),
            slot: 900,
            completed_at,
            cancelled_at: None,
            payload: serde_json::value::RawValue::from_string("[1]".to_string()).ok(),
            kind: "default".to_string(),
            cost,
            running_since: None,
            failed_at: None,
            attempts: Vec::new(),
            detail: None,
        }
    }

    /// A repeated key answers the earlier task as it is now, if the request is the same; a
    /// key that names a task no longer there is a bug's trace (500).
    #[test]
    fn a_repeated_key_replays_its_task_or_is_refused() {
        let user = alice();
        let earlier = || {
            let earlier = Earlier::Task("t0".to_string());
            Answer::Admit(Ok(Admission::Earlier { earlier, now: 1_000, ledger: None, tier: None }))
        };
        let store = Scripted::new([earlier(), Answer::ReadTask(Some(record(1, Some(950))))]);
        let outcome = admit_redis(&store, &Manual::new(), &task(&user, Some("k")));
        assert_eq!(placement(outcome), shown(Placement::Completed { completed_at: 950 }));

        let store = Scripted::new([earlier(), Answer::ReadTask(Some(record(1, None))), Answer::Position(4)]);
        let outcome = admit_redis(&store, &Manual::new(), &task(&user, Some("k")));
        assert_eq!(placement(outcome), shown(Placement::Queued { position: 4 }));
        assert!(store.calls().iter().any(|c| c.starts_with("position ") && c.ends_with(" t0")), "{:?}", store.calls());

        // A task to deliver shows as it is: its attempt in flight, or failed (no position).
        let running = TaskRecord { running_since: Some(960), ..record(1, None) };
        let store = Scripted::new([earlier(), Answer::ReadTask(Some(running))]);
        let outcome = admit_redis(&store, &Manual::new(), &task(&user, Some("k")));
        assert_eq!(placement(outcome), shown(Placement::Running { since: 960 }));
        let failed = TaskRecord { failed_at: Some(990), ..record(1, None) };
        let store = Scripted::new([earlier(), Answer::ReadTask(Some(failed))]);
        let outcome = admit_redis(&store, &Manual::new(), &task(&user, Some("k")));
        assert_eq!(placement(outcome), shown(Placement::Failed { failed_at: 990 }));
        assert!(!store.calls().iter().any(|c| c.starts_with("position ")), "{:?}", store.calls());

        let store = Scripted::new([earlier(), Answer::ReadTask(Some(record(2, None)))]);
        let outcome = admit_redis(&store, &Manual::new(), &task(&user, Some("k")));
        assert_eq!(placement(outcome), Err("key reused".to_string()));

        let store = Scripted::new([earlier(), Answer::ReadTask(None)]);
        let outcome = admit_redis(&store, &Manual::new(), &task(&user, Some("k")));
        assert_eq!(placement(outcome), Err(r#"Internal("idempotency key names unknown task t0")"#.to_string()));
    }

    // The `kv` ledger.

    fn prepared(now: i64, earlier: Earlier) -> Answer {
        Answer::Prepare(Ok(Prepared { now, backlog_full: false, earlier, tier: None }))
    }

    fn filed_all(placements: Vec<Placement>) -> Answer {
        Answer::File(Ok(Filed { placements, now: 1_000, ran: Vec::new(), wake_unheard: false, started: Vec::new() }))
    }

    fn admit_kv<'a>(
        config: &'a Config,
        store: &'a Scripted,
        clock: &'a Yielding<'a>,
        new: &'a NewTask<'a>,
        task_id: &str,
    ) -> impl Future<Output = Result<Outcome, AdmitError>> + 'a {
        let request = Request::new(config, new, format!("{task_id:0<24}"));
        async move { admit_with_kv(config, store, &request, clock).await }
    }

    fn slot(outcome: &Result<Outcome, AdmitError>) -> Result<i64, String> {
        match outcome {
            Ok(Outcome::Admitted { task, .. }) => Ok(task.slot),
            Ok(_) => Err("not admitted".to_string()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    /// Three admissions of one lane at once: the first commits alone, the two that came
    /// while it did commit together, in one ledger write and one `file` call, FIFO.
    #[test]
    fn admissions_that_arrive_during_a_commit_commit_together() {
        let (config, user, manual) = (config(LedgerBackend::Kv), alice(), Manual::new());
        let clock = Yielding(&manual);
        let store = Scripted::new([
            prepared(1_000, Earlier::None),
            prepared(1_000, Earlier::None),
            prepared(1_000, Earlier::None),
            filed_all(vec![DONE]),
            filed_all(vec![QUEUED, QUEUED]),
        ]);
        let new = task(&user, None);
        let all = pin!(futures::future::join3(
            admit_kv(&config, &store, &clock, &new, "a"),
            admit_kv(&config, &store, &clock, &new, "b"),
            admit_kv(&config, &store, &clock, &new, "c"),
        ));
        let (a, b, c) = poll_some(all, 100).unwrap_or_else(|| panic!("still waiting: {:?}", store.calls()));
        assert_eq!((slot(&a), slot(&b), slot(&c)), (Ok(1_000), Ok(2_000), Ok(3_000)));
        assert_eq!(store.count("file"), 2);
        assert!(store.calls().contains(&"file [2000, 3000]".to_string()), "{:?}", store.calls());
        assert_eq!(store.ledger.borrow().spent().len(), 3);
        assert!(GROUPS.with_borrow(HashMap::is_empty), "the group was not handed on");
    }

    /// Polls `future` at most `times` times.
    fn poll_some<F: Future>(future: std::pin::Pin<&mut F>, times: usize) -> Option<F::Output> {
        let mut future = future;
        let mut cx = Context::from_waker(Waker::noop());
        (0..times).find_map(|_| match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    }

    /// The request leading a batch is dropped while it files: the others of its batch are
    /// answered (it may have been filed: uncertain), and the group is handed on.
    #[test]
    fn a_dropped_leader_answers_its_batch_and_hands_the_group_on() {
        let (config, user, manual) = (config(LedgerBackend::Kv), alice(), Manual::new());
        let clock = Yielding(&manual);
        let store = Scripted::new([
            prepared(1_000, Earlier::None),
            prepared(1_000, Earlier::None),
            prepared(1_000, Earlier::None),
            filed_all(vec![DONE]),
            prepared(1_000, Earlier::None),
            filed_all(vec![QUEUED]),
        ]);
        let new = task(&user, None);
        let mut a = Box::pin(admit_kv(&config, &store, &clock, &new, "a"));
        let mut b = Box::pin(admit_kv(&config, &store, &clock, &new, "b"));
        let mut c = pin!(admit_kv(&config, &store, &clock, &new, "c"));
        // a files alone while b and c wait; then b leads [b, c] and is dropped while filing.
        assert!(poll_some(a.as_mut(), 1).is_none() && poll_some(b.as_mut(), 1).is_none());
        assert!(poll_some(c.as_mut(), 1).is_none());
        assert_eq!(poll_some(a.as_mut(), 1).as_ref().map(slot), Some(Ok(1_000)));
        assert!(poll_some(b.as_mut(), 1).is_none(), "b should be filing [b, c]");
        drop(b);
        let uncertain = "Uncertain(\"the request committing this admission was cancelled\")";
        assert_eq!(poll_some(c.as_mut(), 1).as_ref().map(slot), Some(Err(uncertain.to_string())));
        // The next admission of the lane leads a commit of its own.
        let d = admit_kv(&config, &store, &clock, &new, "d");
        assert_eq!(poll_some(pin!(d), 10).as_ref().map(slot), Some(Ok(4_000)));
    }

    /// Where the `kv` path stops before storing anything, a reserved key is released; where
    /// `file` did not answer (it may have run), it is kept.
    #[test]
    fn kv_refusals_and_errors_release_the_key_unless_the_task_may_be_stored() {
        let user = alice();
        let run = |store: &Scripted, new: &NewTask<'_>| {
            let (config, manual) = (config(LedgerBackend::Kv), Manual::new());
            let clock = Yielding(&manual);
            run_now(admit_kv(&config, store, &clock, new, "a"))
        };
        let costly = NewTask { kind: "big", cost: 3, ..task(&user, Some("k")) };
        let store = Scripted::new([prepared(1_000, Earlier::None)]);
        assert_eq!(placement(run(&store, &costly)), Err("too costly for 2".to_string()));
        assert_eq!(store.count("release"), 1);

        let mut store = Scripted::new([prepared(1_000, Earlier::None)]);
        store.ledger_down = true;
        let outcome = run(&store, &task(&user, Some("k")));
        assert_eq!(placement(outcome), Err(r#"Unavailable("key-value store down")"#.to_string()));
        assert_eq!((store.count("release"), store.count("file")), (1, 0));

        let down = Answer::File(Err(StoreError::Unavailable("down".to_string())));
        let store = Scripted::new([prepared(1_000, Earlier::None), down]);
        assert_eq!(placement(run(&store, &task(&user, Some("k")))), Err(r#"Uncertain("down")"#.to_string()));
        assert_eq!(store.count("release"), 0);

        let full = Answer::Prepare(Ok(Prepared { now: 1_000, backlog_full: true, earlier: Earlier::None, tier: None }));
        let store = Scripted::new([full]);
        assert_eq!(placement(run(&store, &task(&user, Some("k")))), Err("backlog full".to_string()));
        assert_eq!(store.calls().len(), 1, "nothing was reserved, so nothing is released");

        let store =
            Scripted::new([prepared(1_000, Earlier::Pending), prepared(1_000, Earlier::None), filed_all(vec![DONE])]);
        assert_eq!(placement(run(&store, &task(&user, Some("k")))), shown(DONE));
        assert_eq!(store.count("prepare"), 2);
    }
}
