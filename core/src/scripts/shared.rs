//! What several scripts answer alike: the completions of tasks a call ran, a filed task's
//! placement (`file_tasks` in `lib.lua`), and the stored values of a task record.

use crate::policy::DEFAULT_KIND;
use crate::scripts::reply::{Cursor, Unexpected, parse_int};
use crate::slot::Spent;
use serde_json::value::RawValue;

/// A completed task, as it appears in the log.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Completion {
    pub task_id: String,
    pub user_id: String,
    pub slot: i64,
    pub completed_at: i64,
    pub kind: String,
    pub cost: u32,
    /// The windows the task ran under (`Policy::spec`). Only read back from the log stream
    /// (entries from before policies existed have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The task's payload, as sent. Only read back from the log stream: the scripts that run
    /// tasks leave it out of their replies (the seed-format line does not show it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// For a task delivered to a target: the attempt this entry records. Only read back from
    /// the log stream.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Logged>,
    /// A pulled task's attempt: the detail its worker reported, as sent. Only read back from
    /// the log stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Box<RawValue>>,
}

/// One delivery attempt that ended, as the record keeps it (`settle` in lib.lua:
/// `<started>,<status or error>,<duration ms>`) and its log entry shows it (`Logged`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attempt {
    pub started_at: i64,
    /// The backend's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why there was no answer (`timeout`, `connection-refused`, `lapsed`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A worker's outcome for a pulled task (`completed`, `retry` or `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// A delivery attempt as its log entry records it. Every attempt that ended has an entry:
/// the one that completed the task (no `outcome`; `completed_at` is the answer's arrival),
/// and each that did not (`outcome` `retry` or `failed`; `completed_at` is when it ended).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Logged {
    pub attempt: u32,
    #[serde(flatten)]
    pub ended: Attempt,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl Completion {
    /// The seed-format log line. Control characters in user ids are escaped so that one
    /// completion is always one line; the NDJSON log carries the exact id.
    pub fn line(&self) -> String {
        let user: String = self
            .user_id
            .chars()
            .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
            .collect();
        format!("{user}-task completed at-{}", self.completed_at)
    }
}

/// A delivery attempt the drainer must make now, or a worker's claim (`pull.lua`): its start
/// is counted and its claim is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub task_id: String,
    pub user_id: String,
    pub kind: String,
    pub cost: u32,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub slot: i64,
    /// The claim's instant on Redis's clock: the attempt's start.
    pub started_at: i64,
    /// The payload's JSON text, as sent.
    pub payload: Option<String>,
    /// A worker's claim token, which its outcome brings back (`None` for the drainer's).
    pub token: Option<String>,
    /// Its start plus the kind's timeout; the claim lapses a margin later.
    pub deadline: i64,
}

/// What became of an admitted task.
#[derive(Debug)]
pub enum Placement {
    Completed {
        completed_at: i64,
    },
    Queued {
        position: i64,
    },
    /// A task to deliver whose first attempt its admission started (at `since`): the caller
    /// delivers it (`Admitted::started`).
    Running {
        since: i64,
    },
    /// Only ever found by a replayed request: a new task is never cancelled.
    Cancelled {
        cancelled_at: i64,
    },
    /// Only ever found by a replayed request: a task to deliver whose attempts all failed.
    Failed {
        failed_at: i64,
    },
}

/// A filed task (the reply of ADMIT and POKE).
pub struct Admitted {
    pub placement: Placement,
    /// The Redis clock when the script ran.
    pub now: i64,
    /// Tasks this call ran (ours, or the user's overdue ones).
    pub ran: Vec<Completion>,
    /// The drainers' wake-up the call published reached no replica (`Filed::wake_unheard`).
    pub wake_unheard: bool,
    /// The attempt the call started (`Placement::Running`), which the caller must make.
    pub started: Option<Claim>,
}

/// What an earlier request with the same Idempotency-Key left.
#[derive(Debug)]
pub enum Earlier {
    None,
    /// That request is still being admitted.
    Pending,
    Task(String),
}

/// What `file_tasks` (lib.lua) did: one placement per task, in the order given.
pub struct Filed {
    pub placements: Vec<Placement>,
    /// The Redis clock when the script ran.
    pub now: i64,
    /// Tasks the call ran (ours, or the user's overdue ones).
    pub ran: Vec<Completion>,
    /// It queued a task and published the drainers' wake-up, but no replica's Redis trigger
    /// had subscribed to hear it (Spin serves HTTP before it subscribes): the caller publishes
    /// again later (`drainer::wake_until_heard`).
    pub wake_unheard: bool,
    /// The first attempts the call started (`Placement::Running`), which the caller must make.
    pub started: Vec<Claim>,
}

/// `file_tasks` (lib.lua): `['filed', now, unheard, k, (status, completed_at | position |
/// started_at)×k, n, completions×n, claims…]`, for `tasks` tasks.
pub(crate) fn filed(reply: &mut Cursor, tasks: usize) -> Result<Filed, Unexpected> {
    match reply.text()?.as_str() {
        "filed" => {}
        other => return Err(reply.fail(format_args!("filing answered {other:?}"))),
    }
    let now = reply.int()?;
    let wake_unheard = reply.flag()?;
    let count = reply.int()?;
    if count != tasks as i64 {
        return Err(reply.fail(format_args!("filed {count} tasks of {tasks}")));
    }
    let placements = (0..tasks).map(|_| placement(reply)).collect::<Result<_, _>>()?;
    let ran = counted_completions(reply)?;
    Ok(Filed { placements, now, ran, wake_unheard, started: claims(reply)? })
}

/// A `(status, completed_at | position)` pair.
pub(crate) fn placement(reply: &mut Cursor) -> Result<Placement, Unexpected> {
    let status = reply.text()?;
    let value = reply.int()?;
    match status.as_str() {
        "completed" => Ok(Placement::Completed { completed_at: value }),
        "queued" => Ok(Placement::Queued { position: value }),
        "running" => Ok(Placement::Running { since: value }),
        other => Err(reply.fail(format_args!("placement {other:?}"))),
    }
}

/// The completions that end a reply: `(task id, user id, slot, completed_at)` each (the
/// scripts that run tasks report no more: the seed-format line and the answers need no more).
pub(crate) fn completions(reply: &mut Cursor) -> Result<Vec<Completion>, Unexpected> {
    let mut ran = Vec::new();
    while !reply.at_end() {
        ran.push(completion(reply)?);
    }
    Ok(ran)
}

/// The claims that end a reply (`claim` in lib.lua: `CLAIM_ITEMS` items each).
pub(crate) fn claims(reply: &mut Cursor) -> Result<Vec<Claim>, Unexpected> {
    let mut claims = Vec::new();
    while !reply.at_end() {
        claims.push(claim(reply)?);
    }
    Ok(claims)
}

/// A count, then that many completions.
pub(crate) fn counted_completions(reply: &mut Cursor) -> Result<Vec<Completion>, Unexpected> {
    let n = reply.count()?;
    (0..n).map(|_| completion(reply)).collect()
}

pub(crate) fn completion(reply: &mut Cursor) -> Result<Completion, Unexpected> {
    Ok(Completion {
        task_id: reply.text()?,
        user_id: reply.text()?,
        slot: reply.int()?,
        completed_at: reply.int()?,
        kind: DEFAULT_KIND.to_string(),
        cost: 1,
        policy: None,
        payload: None,
        delivery: None,
        detail: None,
    })
}

/// `(id, user, kind, cost, attempt, slot, started_at, payload or '', token or '', deadline)`.
pub(crate) fn claim(reply: &mut Cursor) -> Result<Claim, Unexpected> {
    let task_id = reply.text()?;
    let user_id = reply.text()?;
    let kind = reply.text()?;
    let cost = u32::try_from(reply.int()?).map_err(|_| reply.fail("a cost out of range"))?;
    let attempt = u32::try_from(reply.int()?).map_err(|_| reply.fail("an attempt number out of range"))?;
    let slot = reply.int()?;
    let started_at = reply.int()?;
    let payload = Some(reply.text()?).filter(|p| !p.is_empty());
    let token = Some(reply.text()?).filter(|t| !t.is_empty());
    let deadline = reply.int()?;
    Ok(Claim { task_id, user_id, kind, cost, attempt, slot, started_at, payload, token, deadline })
}

/// What an earlier request with the same Idempotency-Key left: '' (nothing), 'pending', or
/// its task id.
pub(crate) fn earlier(reply: &mut Cursor) -> Result<Earlier, Unexpected> {
    Ok(match reply.text()?.as_str() {
        "" => Earlier::None,
        "pending" => Earlier::Pending,
        task_id => Earlier::Task(task_id.to_string()),
    })
}

/// A tier: '' for the built-in one.
pub(crate) fn tier(reply: &mut Cursor) -> Result<Option<String>, Unexpected> {
    Ok(Some(reply.text()?).filter(|t| !t.is_empty()))
}

/// A ledger: its presence flag, then its value ('' when absent).
pub(crate) fn ledger(reply: &mut Cursor) -> Result<Option<Vec<u8>>, Unexpected> {
    let present = reply.flag()?;
    let value = reply.bytes()?;
    Ok(present.then(|| value.to_vec()))
}

/// A count, then that many completion-history entries.
pub(crate) fn history(reply: &mut Cursor) -> Result<Vec<Spent>, Unexpected> {
    let n = reply.count()?;
    (0..n).map(|_| spent(reply)).collect()
}

/// A completion-history entry: `<ms>`, or `<ms>*<units>`.
fn spent(reply: &mut Cursor) -> Result<Spent, Unexpected> {
    let text = reply.bytes()?;
    let (ms, units) = match text.iter().position(|&b| b == b'*') {
        None => (text, None),
        Some(star) => (&text[..star], Some(&text[star + 1..])),
    };
    let ms = parse_int(ms).ok_or_else(|| reply.fail("a completion time is not an integer"))?;
    Ok((ms, cost(reply, units)?))
}

/// A cost as stored (absent: 1).
pub(crate) fn cost(reply: &Cursor, stored: Option<&[u8]>) -> Result<u32, Unexpected> {
    match stored {
        None => Ok(1),
        Some(b) => parse_int(b).and_then(|n| u32::try_from(n).ok()).ok_or_else(|| reply.fail("a stored cost")),
    }
}

/// An item that is a stored cost ('' or text).
pub(crate) fn cost_item(reply: &mut Cursor) -> Result<u32, Unexpected> {
    let stored = reply.bytes()?;
    cost(reply, Some(stored))
}

/// An item that is a stored payload ('' for none).
pub(crate) fn payload_item(reply: &mut Cursor) -> Result<Option<Box<RawValue>>, Unexpected> {
    let stored = reply.bytes()?;
    payload(reply, Some(stored))
}

/// A kind as stored (absent: the default one).
pub(crate) fn kind(stored: Option<&[u8]>) -> String {
    stored.map_or_else(|| DEFAULT_KIND.to_string(), |b| String::from_utf8_lossy(b).into_owned())
}

/// A stored payload: its JSON text, or nothing for none (JSON text is never empty).
pub(crate) fn payload(reply: &Cursor, stored: Option<&[u8]>) -> Result<Option<Box<RawValue>>, Unexpected> {
    match stored {
        None | Some(b"") => Ok(None),
        Some(text) => String::from_utf8(text.to_vec())
            .ok()
            .and_then(|text| RawValue::from_string(text).ok())
            .map(Some)
            .ok_or_else(|| reply.fail("a stored payload is not JSON")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::reply::Reply;
    use super::super::reply::tests::text;

    /// A completion as the scripts that run tasks report it.
    pub fn completion(id: &str, user: &str, slot: i64, at: i64) -> [Reply; 4] {
        [text(id), text(user), Reply::Int(slot), text(&at.to_string())]
    }
}
