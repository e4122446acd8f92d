//! What the handlers answer with: the configuration or its 500, JSON and text responses, a
//! task's answer with its lane's rate-limit fields, query values, and the mark of a response
//! whose script already counted it. A leaf: the handlers and the route table take from it,
//! and it takes from none of them.

use super::headers::{self, insert};
use crate::admission::{AdmitError, LaneNow, Outcome, Task};
use crate::config::Config;
use crate::policy::Policy;
use crate::problem::{HttpResponse, Problem};
use crate::queue::Placement;
use http::{HeaderMap, HeaderName, Response, StatusCode, header};
use serde::Serialize;
use serde_json::Value;
use std::rc::Rc;
use task_core::request::percent_decode;
use task_core::user::{MAX_USER_ID_CHARS, UserId};

/// The configuration; an error is the operator's (answered 500 by the routes that need it).
pub(super) type Loaded = anyhow::Result<Rc<Config>>;

/// Marks a response that the script behind it already counted in the metrics.
#[derive(Clone, Copy)]
pub(super) struct CountedByScript;

/// `response`, marked as counted by its script (so `count_response` adds no round trip).
pub(super) fn counted(mut response: HttpResponse) -> HttpResponse {
    response.extensions_mut().insert(CountedByScript);
    response
}

/// The configuration, or the 500 for a route that cannot work without it.
pub(super) fn configured(config: &Loaded) -> Result<&Config, Problem> {
    config.as_deref().map_err(|e| Problem::internal(format!("configuration: {e}")))
}

/// The answer to an admission: the task (200/202) with the rate-limit fields of its lane, or
/// the problem.
pub(super) fn admission_response(
    config: &Config,
    outcome: Result<Outcome, AdmitError>,
) -> Result<HttpResponse, Problem> {
    match outcome {
        Ok(Outcome::Admitted { task, lane, .. }) => Ok(counted(task_response(config, task, &lane, false)?)),
        Ok(Outcome::Replayed { task, lane }) => task_response(config, task, &lane, true),
        Ok(Outcome::BacklogFull) => Err(Problem::backlog_full(config.max_backlog, 1)),
        Ok(Outcome::TooCostly { window, tier }) => {
            Err(Problem::too_costly(window.quota, window.window_ms, tier.as_deref()))
        }
        Ok(Outcome::KeyReused) => Err(Problem::idempotency_key_reused()),
        Ok(Outcome::KeyInUse) => {
            Err(Problem::conflict("a request with this Idempotency-Key is still being admitted; retry"))
        }
        Err(AdmitError::Unavailable(e)) => Err(Problem::unavailable(format!("{e}; the task was not stored"))),
        Err(AdmitError::Uncertain(e)) => Err(Problem::unavailable(format!(
            "{e}; Redis did not confirm the task, so it may have been stored: retry with the same Idempotency-Key to get it rather than a second one"
        ))),
        Err(AdmitError::Contended) => {
            Err(Problem::unavailable("too many concurrent requests for this user; the task was not stored"))
        }
        Err(AdmitError::Internal(e)) => Err(Problem::internal(e)),
    }
}

/// A task as every route shows it (`POST`, `GET` and `DELETE /api/v1/task/{id}`), serialised
/// from a type so its fields keep one order and a payload goes out as sent.
#[derive(Serialize)]
pub(super) struct TaskView<'a> {
    task_id: &'a str,
    user_id: &'a str,
    kind: &'a str,
    cost: u32,
    status: &'static str,
    slot: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a serde_json::value::RawValue>,
    /// A delivery's attempt in flight, its failure, and the attempts that ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    running_since: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_at: Option<i64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    attempts: &'a [crate::scripts::Attempt],
    /// A pulled task's last outcome's detail, as its worker sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::value::RawValue>,
}

impl<'a> TaskView<'a> {
    /// A stored task (`GET`, `DELETE`), with its payload.
    pub(super) fn of(task_id: &'a str, task: &'a crate::queue::TaskRecord) -> Self {
        TaskView {
            task_id,
            user_id: &task.user_id,
            kind: &task.kind,
            cost: task.cost,
            status: task.status().name(),
            slot: task.slot,
            completed_at: task.completed_at,
            cancelled_at: task.cancelled_at,
            queue_position: None,
            payload: task.payload.as_deref(),
            running_since: task.running_since,
            failed_at: task.failed_at,
            attempts: &task.attempts,
            detail: task.detail.as_deref(),
        }
    }
}

/// 200 for a completed task, 202 (with `Location` and `Retry-After`) for a queued one (and
/// 200 for a cancelled one, which only a replayed request finds), with the rate-limit fields
/// of the lane's policy.
pub(super) fn task_response(
    config: &Config,
    task: Task,
    lane: &LaneNow,
    replayed: bool,
) -> Result<HttpResponse, Problem> {
    let no_windows = Policy::default();
    let policy = config.policies.resolve(&task.kind, lane.tier.as_deref()).unwrap_or(&no_windows);
    let mut headers = headers::rate_limit_headers(policy, &lane.recent, lane.now, config.x_ratelimit_headers);
    if replayed {
        insert(&mut headers, HeaderName::from_static("idempotency-replayed"), "true");
    }
    let mut body = TaskView {
        task_id: &task.task_id,
        user_id: &task.user_id,
        kind: &task.kind,
        cost: task.cost,
        status: "completed",
        slot: task.slot,
        completed_at: None,
        cancelled_at: None,
        queue_position: None,
        payload: None,
        running_since: None,
        failed_at: None,
        attempts: &[],
        detail: None,
    };
    let status = match task.placement {
        Placement::Completed { completed_at } => {
            body.completed_at = Some(completed_at);
            StatusCode::OK
        }
        Placement::Cancelled { cancelled_at } => {
            body.status = "cancelled";
            body.cancelled_at = Some(cancelled_at);
            StatusCode::OK
        }
        Placement::Failed { failed_at } => {
            body.status = "failed";
            body.failed_at = Some(failed_at);
            StatusCode::OK
        }
        Placement::Queued { position } => {
            let retry_after = ((task.slot - lane.now + 999) / 1000).max(1);
            insert(&mut headers, header::LOCATION, &format!("/api/v1/task/{}", task.task_id));
            insert(&mut headers, header::RETRY_AFTER, &retry_after.to_string());
            body.status = "queued";
            body.queue_position = Some(position);
            StatusCode::ACCEPTED
        }
        // Its first attempt is being made: its outcome is known within the kind's timeout.
        Placement::Running { since } => {
            insert(&mut headers, header::LOCATION, &format!("/api/v1/task/{}", task.task_id));
            insert(&mut headers, header::RETRY_AFTER, "1");
            body.status = "running";
            body.running_since = Some(since);
            StatusCode::ACCEPTED
        }
    };
    let mut response = serialized_response(status, &body)?;
    response.headers_mut().extend(headers);
    Ok(response)
}

/// `name=value` pairs of a query string (a bare `name` has an empty value).
pub(super) fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query.unwrap_or("").split('&').filter(|p| !p.is_empty()).map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// A `user_id` query parameter (the overview's, the keys listing's): percent-decoded with
/// `+` as a space, then a `UserId`; else the 400.
pub(super) fn query_user_id(value: &str) -> Result<String, Problem> {
    percent_decode(value, true).and_then(|id| UserId::parse(id).ok()).map(UserId::into_string).ok_or_else(|| {
        Problem::bad_request(format!("user_id must be 1 to {} characters of UTF-8, percent-encoded", MAX_USER_ID_CHARS))
    })
}

pub(super) fn text_response(body: String, content_type: &str) -> HttpResponse {
    let mut response = Response::new(body);
    insert(response.headers_mut(), header::CONTENT_TYPE, content_type);
    response
}

/// A JSON body from a `Serialize` type (so a payload's raw text goes out as sent).
pub(super) fn serialized_response(status: StatusCode, body: &impl Serialize) -> Result<HttpResponse, Problem> {
    let text = serde_json::to_string(body).map_err(|e| Problem::internal(format!("serialising the answer: {e}")))?;
    let mut response = Response::new(text);
    *response.status_mut() = status;
    insert(response.headers_mut(), header::CONTENT_TYPE, "application/json");
    Ok(response)
}

pub(super) fn json_response(status: StatusCode, body: &Value, headers: HeaderMap) -> HttpResponse {
    let mut response = Response::new(body.to_string());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    insert(response.headers_mut(), header::CONTENT_TYPE, "application/json");
    response
}

/// `{"status": "ok"}`-style bodies.
pub(super) fn ok_json(body: Value) -> Result<HttpResponse, Problem> {
    Ok(json_response(StatusCode::OK, &body, HeaderMap::new()))
}
