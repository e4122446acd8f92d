//! Routing, request validation and responses (SPEC §2).

use crate::admission::{self, AdmitError, Outcome, Task};
use crate::config::{Config, LedgerBackend};
use crate::deadline::with_deadline;
use crate::keys::{UserKey, is_task_id};
use crate::ledger::{self, LedgerError};
use crate::problem::{self, HttpResponse};
use crate::queue::{Cancelled, Placement, Queue, StoreError, TaskRecord};
use crate::slot;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use spin_sdk::http::Request;
use std::rc::Rc;
use std::time::Duration;

/// Largest accepted request body (SPEC §2: 413 above it).
pub const MAX_BODY: usize = 4 * 1024;
/// Longest user id, in characters.
pub const MAX_USER_ID_CHARS: usize = 128;
/// Largest task payload: its JSON text as sent, in bytes (413 above it).
pub const MAX_PAYLOAD: usize = 2 * 1024;
/// Log page size: default and most.
const LOG_PAGE_DEFAULT: u32 = 1_000;
const LOG_PAGE_MAX: u32 = 10_000;
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// A request body must arrive within this long.
const BODY_DEADLINE: Duration = Duration::from_secs(5);

/// The page at `/` (`page.html`, no external resources) and the API contract.
const PAGE: &str = include_str!("page.html");
const OPENAPI: &str = include_str!("openapi.json");
/// Bounds of the overview, so a refresh costs the same with 10 or 10,000 users.
const OVERVIEW_SOONEST: usize = 20;
const OVERVIEW_RECENT: usize = 50;
const OVERVIEW_QUEUED: usize = 100;

/// Marks a response that the script behind it already counted in the metrics.
#[derive(Clone, Copy)]
struct CountedByScript;

/// `response`, marked as counted by its script (so `count_response` adds no round trip).
fn counted(mut response: HttpResponse) -> HttpResponse {
    response.extensions_mut().insert(CountedByScript);
    response
}

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
        "/api/v1/task" if method == Method::POST => create_task(request, config).await,
        "/api/v1/task" => problem::method_not_allowed("POST"),
        "/api/v1/log" if is_get => read_log(config, headers, query).await,
        "/api/v1/overview" if is_get => overview(config, headers, query).await,
        "/metrics" if is_get => metrics(config, headers).await,
        "/healthz" if is_get => health(config).await,
        "/" if is_get => text_response(PAGE.to_string(), "text/html; charset=utf-8"),
        "/api/v1/openapi.json" if is_get => text_response(OPENAPI.to_string(), "application/json"),
        "/api/v1/log" | "/api/v1/overview" | "/metrics" | "/healthz" | "/" | "/api/v1/openapi.json" => {
            problem::method_not_allowed("GET, HEAD")
        }
        _ => {
            if let Some(id) = path.strip_prefix("/api/v1/task/") {
                return match method {
                    _ if is_get => get_task(config, id).await,
                    Method::DELETE => cancel_task(config, id).await,
                    _ => problem::method_not_allowed("GET, HEAD, DELETE"),
                };
            }
            match path.strip_prefix("/api/v1/users/") {
                Some(user) if is_get => user_state(config, headers, user).await,
                Some(_) => problem::method_not_allowed("GET, HEAD"),
                None => problem::not_found(format!("no route for {path}")),
            }
        }
    }
}

/// Counts the answer in the shared metrics unless a script already did. Best effort, and
/// skipped for 503s: Redis is what failed, and a second wait on it would only delay them.
async fn count_response(config: &Config, response: &HttpResponse) {
    if response.extensions().get::<CountedByScript>().is_some() || response.status() == StatusCode::SERVICE_UNAVAILABLE {
        return;
    }
    if let Ok(queue) = Queue::connect(config).await {
        let _ = queue.count_status(response.status().as_u16()).await;
    }
}

/// The configuration, or the 500 for a route that cannot work without it.
fn configured(config: &Loaded) -> Result<&Config, HttpResponse> {
    config.as_deref().map_err(|e| problem::internal(format!("configuration: {e}")))
}

/// The configuration for an admin route, or the answer that refuses the request.
fn admin<'c>(config: &'c Loaded, headers: &HeaderMap) -> Result<&'c Config, HttpResponse> {
    let config = configured(config)?;
    if authorized(config, headers) { Ok(config) } else { Err(problem::unauthorized()) }
}

/// `name=value` pairs of a query string (a bare `name` has an empty value).
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query.unwrap_or("").split('&').filter(|p| !p.is_empty()).map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

fn text_response(body: String, content_type: &str) -> HttpResponse {
    let mut response = Response::new(body);
    insert(response.headers_mut(), header::CONTENT_TYPE, content_type);
    response
}

async fn create_task(request: Request, config: &Loaded) -> HttpResponse {
    if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or("");
        if !is_json_media_type(text) {
            return problem::unsupported_media_type(text);
        }
    }
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > MAX_BODY as u64) {
        return problem::too_large(MAX_BODY);
    }
    let (parts, body) = request.into_parts();
    let request_headers = &parts.headers;
    // Read at most MAX_BODY bytes, whatever the client declared or streams, and give up on
    // a client that trickles them (slow loris) instead of holding the instance.
    let body = match with_deadline(Limited::new(body, MAX_BODY).collect(), BODY_DEADLINE).await {
        Some(Ok(collected)) => collected.to_bytes(),
        Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return problem::too_large(MAX_BODY),
        Some(Err(e)) => return problem::bad_request(format!("could not read the body: {e}")),
        None => return problem::request_timeout(BODY_DEADLINE.as_secs()),
    };
    let idempotency_key = match idempotency_key(request_headers) {
        Ok(key) => key,
        Err(detail) => return problem::bad_request(detail),
    };
    let NewTask { user_id, payload } = match parse_task_body(&body) {
        Ok(task) => task,
        Err(BodyError::Invalid(detail)) => return problem::bad_request(detail),
        Err(BodyError::PayloadTooLarge(bytes)) => return problem::payload_too_large(bytes, MAX_PAYLOAD),
    };
    let config = match configured(config) {
        Ok(config) => config,
        Err(response) => return response,
    };
    match admission::admit(config, &user_id, payload.as_deref(), idempotency_key.as_deref()).await {
        Ok(Outcome::Admitted { task, recent, now }) => {
            let headers = rate_limit_headers(config.limits, &recent, now);
            counted(task_response(task, now, headers))
        }
        Ok(Outcome::Replayed { task, recent, now }) => {
            let mut headers = rate_limit_headers(config.limits, &recent, now);
            insert(&mut headers, header::HeaderName::from_static("idempotency-replayed"), "true");
            task_response(task, now, headers)
        }
        Ok(Outcome::BacklogFull) => problem::backlog_full(config.max_backlog, 1),
        Ok(Outcome::KeyInUse) => problem::conflict("a request with this Idempotency-Key is still being admitted; retry"),
        Err(AdmitError::Unavailable(e)) => problem::unavailable(format!("{e}; the task was not stored")),
        Err(AdmitError::Uncertain(e)) => problem::unavailable(format!(
            "{e}; Redis did not confirm the task, so it may have been stored: retry with the same Idempotency-Key to get it rather than a second one"
        )),
        Err(AdmitError::Contended) => problem::unavailable("too many concurrent requests for this user; the task was not stored"),
        Err(AdmitError::Internal(e)) => problem::internal(e),
    }
}

/// 200 for a completed task, 202 (with `Location` and `Retry-After`) for a queued one (and
/// 200 for a cancelled one, which only a replayed request finds).
fn task_response(task: Task, now: i64, mut headers: HeaderMap) -> HttpResponse {
    let Task { task_id, user_id, slot, placement } = task;
    let (status, body) = match placement {
        Placement::Completed { completed_at } => (
            StatusCode::OK,
            json!({"task_id": task_id, "user_id": user_id, "status": "completed",
                   "slot": slot, "completed_at": completed_at}),
        ),
        Placement::Cancelled { cancelled_at } => (
            StatusCode::OK,
            json!({"task_id": task_id, "user_id": user_id, "status": "cancelled",
                   "slot": slot, "cancelled_at": cancelled_at}),
        ),
        Placement::Queued { position } => {
            let retry_after = ((slot - now + 999) / 1000).max(1);
            insert(&mut headers, header::LOCATION, &format!("/api/v1/task/{task_id}"));
            insert(&mut headers, header::RETRY_AFTER, &retry_after.to_string());
            (
                StatusCode::ACCEPTED,
                json!({"task_id": task_id, "user_id": user_id, "status": "queued",
                       "slot": slot, "queue_position": position}),
            )
        }
    };
    json_response(status, &body, headers)
}

/// The Idempotency-Key header: absent, or 1–128 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// A validated `POST /api/v1/task` body.
#[derive(Debug, PartialEq)]
pub struct NewTask {
    pub user_id: String,
    /// The payload's JSON text exactly as sent (`null` or absent: none).
    pub payload: Option<String>,
}

#[derive(Debug, PartialEq)]
pub enum BodyError {
    /// A 400, with what is wrong.
    Invalid(String),
    /// A 413: the payload's size in bytes.
    PayloadTooLarge(usize),
}

/// The body's members; any others are ignored.
#[derive(Deserialize)]
struct TaskBody<'a> {
    user_id: Option<Value>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

/// The body of a new task: `user_id`, a string of 1–128 characters or a JSON integer taken
/// as its decimal string, and an optional `payload`, any JSON value of at most
/// `MAX_PAYLOAD` bytes as sent. It is kept as sent (its text, not a re-serialisation) so
/// that key order and number precision come back unchanged.
pub fn parse_task_body(body: &[u8]) -> Result<NewTask, BodyError> {
    let invalid = BodyError::Invalid;
    // A struct also deserialises from a JSON array: only an object may name the members.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let fields: TaskBody = match (first, serde_json::from_slice::<TaskBody>(body)) {
        (_, Err(e)) if e.is_syntax() || e.is_eof() => return Err(invalid(format!("the body is not valid JSON: {e}"))),
        (Some(b'{'), Ok(fields)) => fields,
        (Some(b'{'), Err(e)) => return Err(invalid(format!("the body is not a valid task: {e}"))),
        _ => return Err(invalid(r#"the body must be a JSON object such as {"user_id": "alice"}"#.to_string())),
    };
    let user_id = match fields.user_id {
        None => return Err(invalid("user_id is missing".to_string())),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(other) => return Err(invalid(format!("user_id must be a string or an integer, not {}", kind(&other)))),
    };
    if user_id.is_empty() {
        return Err(invalid("user_id must not be empty".to_string()));
    }
    if user_id.chars().count() > MAX_USER_ID_CHARS {
        return Err(invalid(format!("user_id must be at most {MAX_USER_ID_CHARS} characters")));
    }
    let payload = fields.payload.map(|p| p.get().to_string());
    if let Some(size) = payload.as_ref().map(String::len).filter(|&n| n > MAX_PAYLOAD) {
        return Err(BodyError::PayloadTooLarge(size));
    }
    Ok(NewTask { user_id, payload })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a non-integer number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `application/json`, or any `+json` type, with or without parameters.
fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// One window of the rate limit as draft-ietf-httpapi-ratelimit-headers-11 names its
/// parts: the policy (`q` quota per `w` seconds) and what is left now (`r` remaining, `t`
/// seconds until more quota is made available). The headers and `GET /api/v1/users/{id}` both come
/// from here.
#[derive(Serialize)]
struct RateWindow {
    policy: &'static str,
    q: u32,
    w: i64,
    r: u32,
    /// Left out when nothing in the window is used (the draft makes `t` optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<i64>,
}

fn rate_windows(limits: slot::Limits, recent: &[i64], now: i64) -> Vec<RateWindow> {
    slot::remaining(limits, recent, now)
        .into_iter()
        .map(|(policy, q, r, t)| RateWindow { policy, q, w: window_seconds(limits, policy), r, t })
        .collect()
}

/// The `RateLimit-Policy` and `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-11
/// (https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/11/): each is a
/// Structured Field List (RFC 9651) of Items whose value is the policy name as a String
/// (quoted), with Integer parameters `q` (quota, in the default unit "requests") and `w`
/// (window, seconds, non-zero) for the policy, and `r` (remaining) and `t` (seconds until
/// more quota is made available: the used unit that leaves the window first) for the
/// current state. A window switched off (quota 0) is not listed, and with both off neither
/// field is sent.
fn rate_limit_headers(limits: slot::Limits, recent: &[i64], now: i64) -> HeaderMap {
    let windows = rate_windows(limits, recent, now);
    let policy: Vec<String> = windows.iter().map(|w| format!("\"{}\";q={};w={}", w.policy, w.q, w.w)).collect();
    let left: Vec<String> = windows
        .iter()
        .map(|w| match w.t {
            Some(t) => format!("\"{}\";r={};t={t}", w.policy, w.r),
            None => format!("\"{}\";r={}", w.policy, w.r),
        })
        .collect();
    let mut headers = HeaderMap::new();
    if !windows.is_empty() {
        insert(&mut headers, header::HeaderName::from_static("ratelimit-policy"), &policy.join(", "));
        insert(&mut headers, header::HeaderName::from_static("ratelimit"), &left.join(", "));
    }
    headers
}

fn window_seconds(limits: slot::Limits, name: &str) -> i64 {
    limits.windows().iter().find(|(n, _, _)| *n == name).map(|(_, _, w)| w / 1000).unwrap_or(0)
}

/// A task as `GET` and `DELETE /api/v1/task/{id}` show it.
#[derive(Serialize)]
struct TaskView<'a> {
    task_id: &'a str,
    user_id: &'a str,
    status: &'static str,
    slot: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
}

impl<'a> TaskView<'a> {
    fn of(task_id: &'a str, task: &'a TaskRecord) -> Self {
        let status = match (task.completed_at, task.cancelled_at) {
            (Some(_), _) => "completed",
            (None, Some(_)) => "cancelled",
            (None, None) => "queued",
        };
        TaskView {
            task_id,
            user_id: &task.user_id,
            status,
            slot: task.slot,
            completed_at: task.completed_at,
            cancelled_at: task.cancelled_at,
            payload: task.payload.as_deref(),
        }
    }
}

/// For a route on one task: a connection to Redis, or the answer (404 for an id we could
/// not have made, without asking Redis; 503 if Redis cannot be reached).
async fn task_route<'c>(config: &'c Loaded, id: &str) -> Result<Queue<'c>, HttpResponse> {
    if !is_task_id(id) {
        return Err(problem::not_found(format!("no task {id:?}")));
    }
    let config = configured(config)?;
    Queue::connect(config).await.map_err(store_problem)
}

async fn get_task(config: &Loaded, id: &str) -> HttpResponse {
    let queue = match task_route(config, id).await {
        Ok(queue) => queue,
        Err(response) => return response,
    };
    match queue.read_task(id).await {
        Ok(Some(task)) => counted(serialized_response(StatusCode::OK, &TaskView::of(id, &task))),
        Ok(None) => counted(problem::not_found(format!("no task {id}"))),
        Err(e) => store_problem(e),
    }
}

/// `DELETE /api/v1/task/{id}`: cancels a queued task (`cancel.lua`). Like `GET`, it needs
/// no admin token: the id (96 random bits) is the capability.
async fn cancel_task(config: &Loaded, id: &str) -> HttpResponse {
    let queue = match task_route(config, id).await {
        Ok(queue) => queue,
        Err(response) => return response,
    };
    // The record names the user, whose queue holds the task; the script checks it again.
    let mut task = match queue.task(id).await {
        Ok(Some(task)) => task,
        Ok(None) => return problem::not_found(format!("no task {id}")),
        Err(e) => return store_problem(e),
    };
    if let Some(at) = task.completed_at {
        return problem::already_completed(id, at);
    }
    if task.cancelled_at.is_none() {
        match queue.cancel(&UserKey::new(&task.user_id), id).await {
            Ok(Cancelled::Cancelled { at }) => task.cancelled_at = Some(at),
            Ok(Cancelled::Completed { at }) => return problem::already_completed(id, at),
            Ok(Cancelled::Unknown) => return problem::not_found(format!("no task {id}")),
            Err(e) => return store_problem(e),
        }
    }
    serialized_response(StatusCode::OK, &TaskView::of(id, &task))
}

/// `GET /api/v1/users/{user_id}` (the id percent-encoded): where one user stands, in work
/// bounded whatever their backlog.
async fn user_state(config: &Loaded, headers: &HeaderMap, encoded: &str) -> HttpResponse {
    let config = match admin(config, headers) {
        Ok(config) => config,
        Err(response) => return response,
    };
    let user_id = match percent_decode(encoded, false) {
        Some(id) if (1..=MAX_USER_ID_CHARS).contains(&id.chars().count()) => id,
        _ => return problem::bad_request(format!("the user id must be 1 to {MAX_USER_ID_CHARS} characters of UTF-8, percent-encoded")),
    };
    let user = UserKey::new(&user_id);
    let ledger_key = config.keys.ledger(&user);
    let in_redis = (config.ledger == LedgerBackend::Redis).then_some(ledger_key.as_str());
    let state = match Queue::connect(config).await {
        Ok(queue) => queue.user_state(&user, in_redis).await,
        Err(e) => Err(e),
    };
    let state = match state {
        Ok(state) => state,
        Err(e) => return store_problem(e),
    };
    let recent = match ledger::recent_slots(config.ledger, &ledger_key, state.ledger.as_deref()) {
        Ok(recent) => recent,
        Err(LedgerError::Unavailable(e)) => return problem::unavailable(e),
        Err(e) => return problem::internal(format!("the ledger of {user_id:?}: {e:?}")),
    };
    let body = json!({
        "user_id": user_id,
        "now": state.now,
        "limits": {"per_second": config.limits.per_second, "per_minute": config.limits.per_minute},
        "queued": state.queued,
        "next_task": state.next_task.map(|(task_id, slot)| json!({"task_id": task_id, "slot": slot})),
        "next_slot": slot::next_slot(config.limits, &recent, state.now),
        "remaining": rate_windows(config.limits, &recent, state.now),
        "recent_completions": state.recent_completions,
    });
    json_response(StatusCode::OK, &body, HeaderMap::new())
}

async fn read_log(config: &Loaded, headers: &HeaderMap, query: Option<&str>) -> HttpResponse {
    let config = match admin(config, headers) {
        Ok(config) => config,
        Err(response) => return response,
    };
    let mut after = None;
    let mut limit = LOG_PAGE_DEFAULT;
    for (name, value) in query_pairs(query) {
        match name {
            "after" if is_stream_id(value) => after = Some(value.to_string()),
            "after" => return problem::bad_request("after must be a cursor from a previous page (like 1700000000000-0)"),
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=LOG_PAGE_MAX).contains(&n) => limit = n,
                _ => return problem::bad_request(format!("limit must be a whole number from 1 to {LOG_PAGE_MAX}")),
            },
            _ => return problem::bad_request(format!("unknown query parameter {name:?}; use after and limit")),
        }
    }
    let page = match Queue::connect(config).await {
        Ok(queue) => queue.log_page(after.as_deref(), limit).await,
        Err(e) => Err(e),
    };
    let page = match page {
        Ok(page) => page,
        Err(e) => return store_problem(e),
    };
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    let mut body = String::new();
    for (_, completion) in &page {
        if ndjson {
            body.push_str(&serde_json::to_string(completion).unwrap_or_default());
        } else {
            body.push_str(&completion.line());
        }
        body.push('\n');
    }
    let mut response = Response::new(body);
    let content_type = if ndjson { "application/x-ndjson" } else { "text/plain; charset=utf-8" };
    insert(response.headers_mut(), header::CONTENT_TYPE, content_type);
    // The cursor for the next page: the last entry's id, or the one given if the page is empty.
    if let Some(cursor) = page.last().map(|(id, _)| id.clone()).or(after) {
        insert(response.headers_mut(), header::HeaderName::from_static("next-cursor"), &cursor);
    }
    response
}

/// `GET /api/v1/overview[?user_id=<id>]`: a bounded snapshot for the page.
async fn overview(config: &Loaded, headers: &HeaderMap, query: Option<&str>) -> HttpResponse {
    let config = match admin(config, headers) {
        Ok(config) => config,
        Err(response) => return response,
    };
    let mut user_id = None;
    for (name, value) in query_pairs(query) {
        match name {
            "user_id" => match percent_decode(value, true) {
                Some(id) if (1..=MAX_USER_ID_CHARS).contains(&id.chars().count()) => user_id = Some(id),
                _ => return problem::bad_request(format!("user_id must be 1 to {MAX_USER_ID_CHARS} characters of UTF-8, percent-encoded")),
            },
            _ => return problem::bad_request(format!("unknown query parameter {name:?}; use user_id")),
        }
    }
    let user = user_id.as_deref().map(UserKey::new);
    let snapshot = match Queue::connect(config).await {
        Ok(queue) => queue.overview(user.as_ref(), OVERVIEW_SOONEST, OVERVIEW_RECENT, OVERVIEW_QUEUED).await,
        Err(e) => Err(e),
    };
    let snapshot = match snapshot {
        Ok(snapshot) => snapshot,
        Err(e) => return store_problem(e),
    };
    let next_due: Vec<Value> = snapshot
        .next_due
        .iter()
        .map(|(user_id, queued, next_slot)| json!({"user_id": user_id, "queued": queued, "next_slot": next_slot}))
        .collect();
    let user = user_id.map(|user_id| {
        let queued = snapshot
            .user_queued
            .iter()
            .map(|(task_id, slot, payload)| QueuedView { task_id, slot: *slot, payload: payload.as_deref() })
            .collect();
        UserView { user_id, queued, completed: &snapshot.user_completed }
    });
    let body = OverviewView {
        now: snapshot.now,
        limits: json!({"per_second": config.limits.per_second, "per_minute": config.limits.per_minute}),
        queued_tasks: snapshot.queued_tasks,
        waiting_users: snapshot.waiting_users,
        next_due,
        recent: &snapshot.recent,
        user,
    };
    serialized_response(StatusCode::OK, &body)
}

/// The overview's body. Serialised from these types rather than built as a `Value`, so that
/// payloads go out as sent (a `Value` would reorder their keys).
#[derive(Serialize)]
struct OverviewView<'a> {
    now: i64,
    limits: Value,
    queued_tasks: i64,
    waiting_users: i64,
    next_due: Vec<Value>,
    recent: &'a [crate::queue::Completion],
    user: Option<UserView<'a>>,
}

#[derive(Serialize)]
struct UserView<'a> {
    user_id: String,
    queued: Vec<QueuedView<'a>>,
    completed: &'a [i64],
}

#[derive(Serialize)]
struct QueuedView<'a> {
    task_id: &'a str,
    slot: i64,
    /// `null` when the task has none.
    payload: Option<&'a RawValue>,
}

/// `GET /metrics`: the shared counters in the Prometheus text format.
async fn metrics(config: &Loaded, headers: &HeaderMap) -> HttpResponse {
    let config = match admin(config, headers) {
        Ok(config) => config,
        Err(response) => return response,
    };
    let counters = match Queue::connect(config).await {
        Ok(queue) => queue.metrics().await,
        Err(e) => Err(e),
    };
    match counters {
        Ok(counters) => text_response(crate::metrics::render(&counters), crate::metrics::CONTENT_TYPE),
        Err(e) => store_problem(e),
    }
}

/// A percent-encoded query value (with `plus_is_space`, `+` is a space, as forms send it)
/// or path segment; `None` if it is not valid UTF-8 once decoded.
fn percent_decode(value: &str, plus_is_space: bool) -> Option<String> {
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

/// A Redis stream id: `<ms>-<seq>`.
fn is_stream_id(s: &str) -> bool {
    let mut parts = s.split('-');
    let digits = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// Admin routes are open when no token is configured; otherwise the bearer token must
/// match, compared in constant time.
fn authorized(config: &Config, headers: &HeaderMap) -> bool {
    let Some(token) = &config.admin_token else { return true };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn health(config: &Loaded) -> HttpResponse {
    let config = match configured(config) {
        Ok(config) => config,
        Err(response) => return response,
    };
    let queue = match Queue::connect(config).await {
        Ok(queue) => queue,
        Err(e) => return store_problem(e),
    };
    // Redis answering the sweep is the health check; and so a probe doubles as the sweep
    // that restarts draining after every drainer was down.
    if let Err(e) = queue.sweep().await {
        return store_problem(e);
    }
    counted(json_response(StatusCode::OK, &json!({"status": "ok"}), HeaderMap::new()))
}

fn store_problem(e: StoreError) -> HttpResponse {
    match e {
        StoreError::Unavailable(detail) => problem::unavailable(detail),
        StoreError::Unexpected(detail) => problem::internal(detail),
    }
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

fn insert(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::XorShift;

    fn user_id(body: &[u8]) -> Result<String, BodyError> {
        parse_task_body(body).map(|task| task.user_id)
    }

    #[test]
    fn user_ids_of_every_accepted_shape() {
        assert_eq!(user_id(br#"{"user_id":"123"}"#), Ok("123".to_string()));
        assert_eq!(user_id(br#"{"user_id":123}"#), Ok("123".to_string()));
        assert_eq!(user_id(br#" {"user_id":-5,"extra":true}"#), Ok("-5".to_string()));
        let emoji = "😀".repeat(128);
        assert_eq!(user_id(format!(r#"{{"user_id":"{emoji}"}}"#).as_bytes()), Ok(emoji));
        assert_eq!(user_id(br#"{"user_id":"a\u0000b\n"}"#), Ok("a\0b\n".to_string()));
    }

    #[test]
    fn every_wrong_shape_is_an_error() {
        let long = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129));
        for body in [
            &b""[..], b"not json", b"[]", br#"["alice", null]"#, b"\"user\"", b"null", b"{}", br#"{"user_id":""}"#,
            br#"{"user_id":null}"#, br#"{"user_id":1.5}"#, br#"{"user_id":true}"#, br#"{"user_id":["a"]}"#,
            br#"{"user_id":{"a":1}}"#, long.as_bytes(), b"{\"user_id\":\"a\"", br#"{"user_id":"a"} x"#,
            br#"{"user_id":"a","payload":}"#, br#"{"user_id":"a","user_id":"b"}"#,
        ] {
            assert!(matches!(parse_task_body(body), Err(BodyError::Invalid(_))), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn payloads_are_kept_as_sent_and_bounded() {
        let sent = r#"{"z": 1, "a": [1.0, 12345678901234567890123, "\u00e9"]}"#;
        let body = format!(r#"{{"user_id":"u","payload":{sent}}}"#);
        assert_eq!(parse_task_body(body.as_bytes()), Ok(NewTask { user_id: "u".into(), payload: Some(sent.to_string()) }));
        for (body, payload) in [(r#"{"user_id":"u"}"#, None), (r#"{"user_id":"u","payload":null}"#, None), (r#"{"user_id":"u","payload":0}"#, Some("0"))] {
            assert_eq!(parse_task_body(body.as_bytes()).map(|t| t.payload), Ok(payload.map(str::to_string)), "{body}");
        }
        // The limit is on the payload's own text: a string of n characters is n + 2 bytes.
        let at_limit = format!(r#"{{"user_id":"u","payload":"{}"}}"#, "x".repeat(MAX_PAYLOAD - 2));
        assert!(parse_task_body(at_limit.as_bytes()).is_ok());
        let over = format!(r#"{{"user_id":"u","payload":"{}"}}"#, "x".repeat(MAX_PAYLOAD - 1));
        assert_eq!(parse_task_body(over.as_bytes()), Err(BodyError::PayloadTooLarge(MAX_PAYLOAD + 1)));
    }

    /// 20,000 random bodies spliced from JSON fragments, wrong types, escapes and junk
    /// bytes: parsing never panics, and whatever it accepts is a 1–128 character id that
    /// came from a `user_id` member, with a payload that is valid JSON.
    #[test]
    fn random_bodies_parse_or_fail_cleanly() {
        let pieces: [&[u8]; 26] = [
            b"{", b"}", b"[", b"]", b"\"user_id\"", b"\"user\"", b":", b",", b"\"", b"\"a\"", b"123", b"-1.5e9",
            b"null", b"true", b"\\u0000", b"\\ud800", b"\\n", "😀".as_bytes(), b"\xff\xfe", b" ", b"\0", b"{\"user_id\":",
            b"99999999999999999999999", b"\"x\"}", b"\"payload\":", b",\"payload\":{\"k\":[1,2]}",
        ];
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let body: Vec<u8> = (0..rng.next(10)).flat_map(|_| rng.pick(&pieces).iter().copied()).collect();
            if let Ok(task) = parse_task_body(&body) {
                accepted += 1;
                let id = task.user_id;
                assert!((1..=MAX_USER_ID_CHARS).contains(&id.chars().count()), "{:?} -> {id:?}", String::from_utf8_lossy(&body));
                assert!(body.windows(9).any(|w| w == b"\"user_id\""), "{:?}", String::from_utf8_lossy(&body));
                if let Some(payload) = task.payload {
                    assert!(serde_json::from_str::<Value>(&payload).is_ok(), "{payload:?}");
                }
            }
        }
        // The generator does reach the accepting path, so both branches are exercised.
        assert!(accepted > 0);
    }

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("Application/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/problem+json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type("application/x-www-form-urlencoded"));
        assert!(!is_json_media_type(""));
    }

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

    #[test]
    fn stream_ids() {
        assert!(is_stream_id("1700000000000-0"));
        assert!(!is_stream_id("1700000000000"));
        assert!(!is_stream_id("-"));
        assert!(!is_stream_id("1-2-3"));
        assert!(!is_stream_id("abc-1"));
    }
}
