//! The HTTP API (SPEC §2, §7): routing, and the one place that turns outcomes and errors
//! into responses. One file per resource, each handler parse → call → answer:
//!
//! - `tasks`: `POST /api/v1/task`, `GET` and `DELETE /api/v1/task/{id}`, and the body rules;
//! - `users`: `GET /api/v1/users/{id}` and `PUT /api/v1/users/{id}/tier`;
//! - `admin`: the log, the page's overview, `/metrics`, `/healthz`, and the admin token;
//! - `keys`: `POST`/`GET /api/v1/keys` and `DELETE /api/v1/keys/{id}` (`auth = api_key`);
//! - `headers`: the rate-limit fields, from the windows of a task's policy.

pub mod admin;
pub mod headers;
mod keys;
pub mod tasks;
pub mod users;

use crate::admission::{AdmitError, LaneNow, Outcome, Task};
use crate::auth::{self, Auth, Caller, Refusal};
use crate::config::Config;
use crate::policy::Policy;
use crate::problem::{self, HttpResponse};
use crate::queue::{Placement, Queue, StoreError};
use headers::insert;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use serde::Serialize;
use serde_json::Value;
use spin_sdk::http::Request;
use std::rc::Rc;

/// The page at `/` (`page.html`, no external resources) and the API contract.
const PAGE: &str = include_str!("../page.html");
const OPENAPI: &str = include_str!("../openapi.json");

/// The configuration; an error is the operator's (answered 500 by the routes that need it).
type Loaded = anyhow::Result<Rc<Config>>;

pub async fn handle(request: Request) -> HttpResponse {
    let config = Config::get().await;
    let mut response = route(request, &config).await;
    if let Ok(config) = &config {
        count_response(config, &response).await;
    }
    // Spin sends a body of unknown length chunked, and its last write then waits for the
    // client's delayed ACK (~40 ms on a keep-alive connection, SPIN-NOTES): with the length
    // known, the response goes out in one piece.
    let length = response.body().len();
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

async fn route(request: Request, config: &Loaded) -> HttpResponse {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let is_get = method == Method::GET || method == Method::HEAD;
    let (headers, query) = (request.headers(), request.uri().query());
    match path.as_str() {
        "/api/v1/task" if method == Method::POST => match caller(config, headers).await {
            Ok(caller) => tasks::create(request, config, &caller).await,
            Err(response) => response,
        },
        "/api/v1/keys" if method == Method::POST => keys::create(request, config).await,
        "/api/v1/keys" if is_get => keys::list(config, headers, query).await,
        "/api/v1/keys" => problem::method_not_allowed("GET, HEAD, POST"),
        "/api/v1/task" => problem::method_not_allowed("POST"),
        "/api/v1/log" if is_get => admin::read_log(config, headers, query).await,
        "/api/v1/overview" if is_get => admin::overview(config, headers, query).await,
        "/metrics" if is_get => admin::metrics(config, headers).await,
        "/healthz" if is_get => admin::health(config).await,
        "/" if is_get => text_response(PAGE.to_string(), "text/html; charset=utf-8"),
        "/api/v1/openapi.json" if is_get => text_response(OPENAPI.to_string(), "application/json"),
        "/api/v1/log" | "/api/v1/overview" | "/metrics" | "/healthz" | "/" | "/api/v1/openapi.json" => {
            problem::method_not_allowed("GET, HEAD")
        }
        _ => {
            if let Some(id) = path.strip_prefix("/api/v1/task/") {
                if !is_get && method != Method::DELETE {
                    return problem::method_not_allowed("GET, HEAD, DELETE");
                }
                let caller = match caller(config, headers).await {
                    Ok(caller) => caller,
                    Err(response) => return response,
                };
                return if is_get {
                    tasks::get(config, &caller, id).await
                } else {
                    tasks::cancel(config, &caller, id).await
                };
            }
            if let Some(id) = path.strip_prefix("/api/v1/keys/") {
                return match method {
                    Method::DELETE => keys::revoke(config, headers, id).await,
                    _ => problem::method_not_allowed("DELETE"),
                };
            }
            let Some(rest) = path.strip_prefix("/api/v1/users/") else {
                return problem::not_found(format!("no route for {path}"));
            };
            match rest.strip_suffix("/tier") {
                Some(user) if method == Method::PUT => users::set_tier(request, config, user).await,
                Some(_) => problem::method_not_allowed("PUT"),
                None if is_get => match caller(config, headers).await {
                    Ok(caller) => users::state(config, &caller, headers, rest).await,
                    Err(response) => response,
                },
                None => problem::method_not_allowed("GET, HEAD"),
            }
        }
    }
}

/// Who is calling a route that acts for a user (`auth.rs`), or the answer that refuses them.
/// Every such route asks here, once.
async fn caller(config: &Loaded, headers: &HeaderMap) -> Result<Caller, HttpResponse> {
    let config = configured(config)?;
    let auth = Auth::get(config).await.map_err(|e| problem::internal(format!("configuration: {e}")))?;
    auth::identify(&auth, config, headers).await.map_err(|refusal| match refusal {
        Refusal::Unauthenticated(code, why) => problem::unauthenticated(code, why),
        Refusal::Unavailable(e) => problem::unavailable(e),
        Refusal::Internal(e) => problem::internal(e),
    })
}

/// Marks a response that the script behind it already counted in the metrics.
#[derive(Clone, Copy)]
struct CountedByScript;

/// `response`, marked as counted by its script (so `count_response` adds no round trip).
fn counted(mut response: HttpResponse) -> HttpResponse {
    response.extensions_mut().insert(CountedByScript);
    response
}

/// Counts the answer in the shared metrics unless a script already did. Best effort, and
/// skipped for 503s: Redis is what failed, and a second wait on it would only delay them.
async fn count_response(config: &Config, response: &HttpResponse) {
    if response.extensions().get::<CountedByScript>().is_some() || response.status() == StatusCode::SERVICE_UNAVAILABLE
    {
        return;
    }
    if let Ok(queue) = Queue::connect(config).await {
        let _ = queue.run(&crate::scripts::CountStatus { status: response.status().as_u16() }).await;
    }
}

/// The configuration, or the 500 for a route that cannot work without it.
fn configured(config: &Loaded) -> Result<&Config, HttpResponse> {
    config.as_deref().map_err(|e| problem::internal(format!("configuration: {e}")))
}

/// The answer to an admission: the task (200/202) with the rate-limit fields of its lane, or
/// the problem.
fn admission_response(config: &Config, outcome: Result<Outcome, AdmitError>) -> HttpResponse {
    match outcome {
        Ok(Outcome::Admitted { task, lane }) => counted(task_response(config, task, &lane, false)),
        Ok(Outcome::Replayed { task, lane }) => task_response(config, task, &lane, true),
        Ok(Outcome::BacklogFull) => problem::backlog_full(config.max_backlog, 1),
        Ok(Outcome::TooCostly { window, tier }) => problem::too_costly(window.quota, window.window_ms, tier.as_deref()),
        Ok(Outcome::KeyReused) => problem::idempotency_key_reused(),
        Ok(Outcome::KeyInUse) => {
            problem::conflict("a request with this Idempotency-Key is still being admitted; retry")
        }
        Err(AdmitError::Unavailable(e)) => problem::unavailable(format!("{e}; the task was not stored")),
        Err(AdmitError::Uncertain(e)) => problem::unavailable(format!(
            "{e}; Redis did not confirm the task, so it may have been stored: retry with the same Idempotency-Key to get it rather than a second one"
        )),
        Err(AdmitError::Contended) => {
            problem::unavailable("too many concurrent requests for this user; the task was not stored")
        }
        Err(AdmitError::Internal(e)) => problem::internal(e),
    }
}

/// A task as every route shows it (`POST`, `GET` and `DELETE /api/v1/task/{id}`), serialised
/// from a type so its fields keep one order and a payload goes out as sent.
#[derive(Serialize)]
struct TaskView<'a> {
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
}

impl<'a> TaskView<'a> {
    /// A stored task (`GET`, `DELETE`), with its payload.
    fn of(task_id: &'a str, task: &'a crate::queue::TaskRecord) -> Self {
        let status = match (task.completed_at, task.cancelled_at) {
            (Some(_), _) => "completed",
            (None, Some(_)) => "cancelled",
            (None, None) => "queued",
        };
        TaskView {
            task_id,
            user_id: &task.user_id,
            kind: &task.kind,
            cost: task.cost,
            status,
            slot: task.slot,
            completed_at: task.completed_at,
            cancelled_at: task.cancelled_at,
            queue_position: None,
            payload: task.payload.as_deref(),
        }
    }
}

/// 200 for a completed task, 202 (with `Location` and `Retry-After`) for a queued one (and
/// 200 for a cancelled one, which only a replayed request finds), with the rate-limit fields
/// of the lane's policy.
fn task_response(config: &Config, task: Task, lane: &LaneNow, replayed: bool) -> HttpResponse {
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
        Placement::Queued { position } => {
            let retry_after = ((task.slot - lane.now + 999) / 1000).max(1);
            insert(&mut headers, header::LOCATION, &format!("/api/v1/task/{}", task.task_id));
            insert(&mut headers, header::RETRY_AFTER, &retry_after.to_string());
            body.status = "queued";
            body.queue_position = Some(position);
            StatusCode::ACCEPTED
        }
    };
    let mut response = serialized_response(status, &body);
    response.headers_mut().extend(headers);
    response
}

fn store_problem(e: StoreError) -> HttpResponse {
    match e {
        StoreError::Unavailable(detail) => problem::unavailable(detail),
        StoreError::Unexpected(detail) => problem::internal(detail),
    }
}

/// `name=value` pairs of a query string (a bare `name` has an empty value).
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query.unwrap_or("").split('&').filter(|p| !p.is_empty()).map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// A `user_id` query parameter (the overview's, the keys listing's): percent-decoded with
/// `+` as a space, then a user id by `tasks::is_user_id`; else the 400.
fn query_user_id(value: &str) -> Result<String, HttpResponse> {
    percent_decode(value, true).filter(|id| tasks::is_user_id(id)).ok_or_else(|| {
        problem::bad_request(format!(
            "user_id must be 1 to {} characters of UTF-8, percent-encoded",
            tasks::MAX_USER_ID_CHARS
        ))
    })
}

/// A percent-encoded query value (with `plus_is_space`, `+` is a space, as forms send it)
/// or path segment; `None` if it is not valid UTF-8 once decoded.
pub fn percent_decode(value: &str, plus_is_space: bool) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn text_response(body: String, content_type: &str) -> HttpResponse {
    let mut response = Response::new(body);
    insert(response.headers_mut(), header::CONTENT_TYPE, content_type);
    response
}

/// A JSON body from a `Serialize` type (so a payload's raw text goes out as sent).
fn serialized_response(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    let text = match serde_json::to_string(body) {
        Ok(text) => text,
        Err(e) => return problem::internal(format!("serialising the answer: {e}")),
    };
    let mut response = Response::new(text);
    *response.status_mut() = status;
    insert(response.headers_mut(), header::CONTENT_TYPE, "application/json");
    response
}

fn json_response(status: StatusCode, body: &Value, headers: HeaderMap) -> HttpResponse {
    let mut response = Response::new(body.to_string());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    insert(response.headers_mut(), header::CONTENT_TYPE, "application/json");
    response
}

/// `{"status": "ok"}`-style bodies.
fn ok_json(body: Value) -> HttpResponse {
    json_response(StatusCode::OK, &body, HeaderMap::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("alice", true), Some("alice".to_string()));
        assert_eq!(percent_decode("a%20b+c", true), Some("a b c".to_string()));
        assert_eq!(percent_decode("a%20b+c", false), Some("a b+c".to_string()));
        assert_eq!(percent_decode("%F0%9F%98%80%3A%2A", true), Some("😀:*".to_string()));
        assert_eq!(percent_decode("%00%0A", true), Some("\0\n".to_string()));
        assert_eq!(percent_decode("%", true), None);
        assert_eq!(percent_decode("%4", true), None);
        assert_eq!(percent_decode("%zz", true), None);
        assert_eq!(percent_decode("%+1", true), None);
        assert_eq!(percent_decode("%FF", true), None);
    }
}
