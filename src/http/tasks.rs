//! `POST /api/v1/task`, `GET` and `DELETE /api/v1/task/{id}`, and the rules for a task's body.

use super::answer::{Loaded, TaskView, admission_response, configured, counted, serialized_response};
use crate::admission::{self, NewTask, Outcome};
use crate::auth::{Caller, Denied};
use crate::deadline::with_deadline;
use crate::keys::{LaneKey, UserKey, is_task_id};
use crate::problem::{HttpResponse, Problem};
use crate::queue::{Cancelled, Queue};
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use spin_sdk::http::Request;
use std::time::Duration;
use task_core::request::{
    BodyError, MAX_BODY, MAX_PAYLOAD, check_idempotency_key, is_json_media_type, parse_task_body,
};

/// A request body must arrive within this long.
const BODY_DEADLINE: Duration = Duration::from_secs(5);

pub async fn create(request: Request, loaded: &Loaded, caller: &Caller) -> Result<HttpResponse, Problem> {
    let (parts, body) = read_request(request, MAX_BODY).await?;
    let idempotency_key = idempotency_key(&parts.headers).map_err(Problem::bad_request)?;
    let config = configured(loaded)?;
    let task = parse_task_body(&body, &config.policies).map_err(|e| match e {
        BodyError::Invalid(detail) => Problem::bad_request(detail),
        BodyError::PayloadTooLarge(bytes) => Problem::payload_too_large(bytes, MAX_PAYLOAD),
    })?;
    let user_id = caller.task_user(task.user_id).map_err(|denied| match denied {
        Denied::NoUser => Problem::bad_request("user_id is missing"),
        Denied::OtherUser => Problem::forbidden(
            "user_id names another user than the caller's credentials; leave it out or name your own",
        ),
        Denied::Worker => Problem::forbidden("a worker key may only claim and report tasks; it acts for no user"),
    })?;
    let new = NewTask {
        user_id: &user_id,
        kind: &task.kind,
        cost: task.cost,
        payload: task.payload.as_deref(),
        idempotency_key: idempotency_key.as_deref(),
    };
    let mut outcome = admission::admit(config, &new).await;
    if let (Ok(Outcome::Admitted { wake_unheard, started, .. }), Ok(loaded)) = (&mut outcome, loaded) {
        if *wake_unheard {
            crate::drainer::wake_until_heard(loaded.clone());
        }
        if let Some(claim) = started.take() {
            crate::drainer::deliver_started(loaded.clone(), claim);
        }
    }
    admission_response(config, outcome)
}

/// The head and JSON body of a request (every route with a body takes JSON): 415 for another
/// `Content-Type`, 413 past `limit` bytes, whether declared or streamed, and 408 for a client
/// that trickles them (slow loris) instead of holding the instance.
pub async fn read_request(request: Request, limit: usize) -> Result<(http::request::Parts, Vec<u8>), Problem> {
    if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or("");
        if !is_json_media_type(text) {
            return Err(Problem::unsupported_media_type(text));
        }
    }
    let declared_length =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > limit as u64) {
        return Err(Problem::too_large(limit));
    }
    let (parts, body) = request.into_parts();
    match with_deadline(Limited::new(body, limit).collect(), BODY_DEADLINE).await {
        Some(Ok(collected)) => Ok((parts, collected.to_bytes().to_vec())),
        Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Problem::too_large(limit)),
        Some(Err(e)) => Err(Problem::bad_request(format!("could not read the body: {e}"))),
        None => Err(Problem::request_timeout(BODY_DEADLINE.as_secs())),
    }
}

/// The Idempotency-Key header: absent, or 1–128 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    headers.get("idempotency-key").map(|value| check_idempotency_key(value.as_bytes())).transpose()
}

/// For a route on one task: a connection to Redis, or the answer (404 for an id we could
/// not have made, without asking Redis; 503 if Redis cannot be reached).
async fn task_route<'c>(config: &'c Loaded, id: &str) -> Result<Queue<'c>, Problem> {
    if !is_task_id(id) {
        return Err(Problem::not_found(format!("no task {id:?}")));
    }
    let config = configured(config)?;
    Ok(Queue::connect(config).await?)
}

pub async fn get(config: &Loaded, caller: &Caller, id: &str) -> Result<HttpResponse, Problem> {
    let queue = task_route(config, id).await?;
    // A verified user's answer depends on the owner, so it is counted after (by `handle`).
    if let Caller::User(_) | Caller::Worker(_) = caller {
        return match queue.run(&crate::scripts::ReadTask { task_id: id, count: false }).await? {
            Some(task) if caller.may_act_for(&task.user_id) => {
                serialized_response(StatusCode::OK, &TaskView::of(id, &task))
            }
            _ => Err(Problem::not_found(format!("no task {id}"))),
        };
    }
    match queue.run(&crate::scripts::ReadTask { task_id: id, count: true }).await? {
        Some(task) => Ok(counted(serialized_response(StatusCode::OK, &TaskView::of(id, &task))?)),
        // The script counted this 404 too: an answer, not an error to pass up.
        None => Ok(counted(Problem::not_found(format!("no task {id}")).into())),
    }
}

/// `DELETE /api/v1/task/{id}`: cancels a queued task (`cancel.lua`). Like `GET`, it needs
/// no admin token: without `auth` the id (96 random bits) is the capability; with it, only
/// the task's owner (or the admin) finds the task, others get the 404 of an unknown id.
pub async fn cancel(config: &Loaded, caller: &Caller, id: &str) -> Result<HttpResponse, Problem> {
    let queue = task_route(config, id).await?;
    // The record names the lane, whose queue holds the task; the script checks it again.
    let mut task = match queue.run(&crate::scripts::ReadTask { task_id: id, count: false }).await? {
        Some(task) if caller.may_act_for(&task.user_id) => task,
        _ => return Err(Problem::not_found(format!("no task {id}"))),
    };
    if let Some(at) = task.completed_at {
        return Err(Problem::already_completed(id, at));
    }
    if task.cancelled_at.is_none() {
        let lane = LaneKey::new(&UserKey::new(&task.user_id), &task.kind);
        match queue.run(&crate::scripts::Cancel { lane: &lane, task_id: id }).await? {
            Cancelled::Cancelled { at } => task.cancelled_at = Some(at),
            Cancelled::Completed { at } => return Err(Problem::already_completed(id, at)),
            Cancelled::Failed { at } => return Err(Problem::already_failed(id, at)),
            Cancelled::Running { since } => return Err(Problem::running(id, since)),
            Cancelled::Unknown => return Err(Problem::not_found(format!("no task {id}"))),
        }
    }
    serialized_response(StatusCode::OK, &TaskView::of(id, &task))
}
