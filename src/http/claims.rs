//! Workers that pull (README "Workers that pull"): `POST /api/v1/claims` claims the due tasks
//! of a pulled kind, waiting up to `wait` for one to fall due (a long poll), and `POST
//! /api/v1/task/{id}/outcome` reports how a claimed attempt ended. A claim is an attempt start
//! the windows count, exactly as a delivery's (`pull.lua`); its outcome is recorded as a
//! delivery's (`report.lua`), so retries, failures and lapsed claims follow §8.

use super::answer::{Loaded, configured, counted, ok_json, serialized_response};
use super::tasks::read_request;
use crate::auth::Caller;
use crate::keys::is_task_id;
use crate::problem::{HttpResponse, Problem};
use crate::queue::{Queue, new_task_id};
use crate::scripts::{Claim, Pull, Report, Reported};
use http::StatusCode;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use spin_sdk::http::Request;
use std::time::{Duration, Instant};
use task_core::pull::{ClaimRequest, MAX_PULL_BODY, OutcomeRequest};

/// A claimed task as a worker gets it: the §8 envelope (`payload` as sent), then the claim's
/// token, its start and its deadline (Unix ms).
#[derive(Serialize)]
struct ClaimView<'a> {
    task_id: &'a str,
    user_id: &'a str,
    kind: &'a str,
    cost: u32,
    attempt: u32,
    slot: i64,
    payload: Option<&'a RawValue>,
    claim: &'a str,
    started_at: i64,
    deadline: i64,
}

#[derive(Serialize)]
struct Claimed<'a> {
    claims: Vec<ClaimView<'a>>,
}

pub async fn claim(request: Request, config: &Loaded, caller: &Caller) -> Result<HttpResponse, Problem> {
    let (_, body) = read_request(request, MAX_PULL_BODY).await?;
    let config = configured(config)?;
    let ask = ClaimRequest::parse(&body).map_err(Problem::bad_request)?;
    if !config.policies.is_pulled(&ask.kind) {
        let pulled = config.policies.pulled_kinds();
        let pulled = if pulled.is_empty() { "none".to_string() } else { pulled.join(", ") };
        return Err(Problem::bad_request(format!(
            "kind {:?} is not pulled by workers (pulled kinds: {pulled})",
            ask.kind
        )));
    }
    if !caller.may_work_on(&ask.kind) {
        return Err(Problem::forbidden(format!(
            "only a worker key for kind {:?} (or the admin) may claim its tasks",
            ask.kind
        )));
    }
    let queue = Queue::connect(config).await?;
    let nonce = new_task_id();
    let wait = Duration::from_millis(ask.wait_ms);
    let began = Instant::now();
    loop {
        let left = wait.saturating_sub(began.elapsed());
        let last = left.is_zero();
        let pulled = queue.run(&Pull { kind: &ask.kind, max: ask.max, nonce: &nonce, last }).await?;
        if !pulled.claims.is_empty() || last {
            // The script counted this answer.
            return claimed(&pulled.claims).map(counted);
        }
        // Until the kind's soonest lane may start, or a bell says that changed.
        let until_due = pulled.next_in_ms.map(|ms| Duration::from_millis(ms.max(1) as u64));
        queue.wait_for_bell(&ask.kind, until_due.map_or(left, |due| due.min(left))).await;
    }
}

fn claimed(claims: &[Claim]) -> Result<HttpResponse, Problem> {
    let mut views = Vec::with_capacity(claims.len());
    for c in claims {
        let payload = match c.payload.as_deref() {
            Some(text) => Some(
                serde_json::from_str::<&RawValue>(text)
                    .map_err(|e| Problem::internal(format!("task {}: stored payload is not JSON: {e}", c.task_id)))?,
            ),
            None => None,
        };
        views.push(ClaimView {
            task_id: &c.task_id,
            user_id: &c.user_id,
            kind: &c.kind,
            cost: c.cost,
            attempt: c.attempt,
            slot: c.slot,
            payload,
            claim: c.token.as_deref().unwrap_or(""),
            started_at: c.started_at,
            deadline: c.deadline,
        });
    }
    serialized_response(StatusCode::OK, &Claimed { claims: views })
}

pub async fn outcome(request: Request, config: &Loaded, caller: &Caller, id: &str) -> Result<HttpResponse, Problem> {
    let (_, body) = read_request(request, MAX_PULL_BODY).await?;
    let config = configured(config)?;
    let told = OutcomeRequest::parse(&body).map_err(Problem::bad_request)?;
    if !is_task_id(id) {
        return Err(Problem::not_found(format!("no task {id:?}")));
    }
    let report = Report {
        task_id: id,
        token: &told.claim,
        result: told.result,
        retry_after_ms: i64::try_from(told.retry_after_ms).unwrap_or(i64::MAX),
        detail: told.detail.as_deref(),
        kinds: caller.worker_kinds(),
    };
    // Every answer after the script ran was counted by it.
    let answer = match Queue::connect(config).await?.run(&report).await? {
        Reported::Completed { at } => ok_json(json!({"task_id": id, "status": "completed", "completed_at": at}))?,
        Reported::Queued { slot } => ok_json(json!({"task_id": id, "status": "queued", "slot": slot}))?,
        Reported::Failed { at } => ok_json(json!({"task_id": id, "status": "failed", "failed_at": at}))?,
        Reported::Stale => Problem::conflict(
            "the claim is not this task's open claim: it lapsed (the task is retried under a new claim), was reported already, or is another task's",
        )
        .into(),
        Reported::Forbidden => Problem::forbidden("the caller may not report for this task's kind").into(),
        Reported::Unknown => Problem::not_found(format!("no task {id}")).into(),
    };
    Ok(counted(answer))
}
