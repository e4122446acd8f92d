//! The HTTP API: the route table (`ROUTES`: the handler of a path and method, and the `Allow`
//! field of a 405), and the answers to admissions. Handlers return `Result<HttpResponse,
//! Problem>`; `handle` turns a `Problem` into its answer. One file per resource, each handler
//! parse → call → answer:
//!
//! - `tasks`: `POST /api/v1/task`, `GET` and `DELETE /api/v1/task/{id}`, and the body rules;
//! - `users`: `GET /api/v1/users/{id}` and `PUT /api/v1/users/{id}/tier`;
//! - `admin`: the log, the page's overview, `/metrics`, `/healthz`, and the admin token;
//! - `keys`: `POST`/`GET /api/v1/keys` and `DELETE /api/v1/keys/{id}` (`auth = api_key`);
//! - `openapi`: the contract, fitted to this deployment's kinds, tiers and authentication;
//! - `headers`: the rate-limit fields, from the windows of a task's policy.

pub mod admin;
pub mod headers;
mod keys;
mod openapi;
pub mod tasks;
pub mod users;

use crate::admission::{AdmitError, LaneNow, Outcome, Task};
use crate::auth::{self, Auth, Caller, Refusal};
use crate::config::Config;
use crate::policy::Policy;
use crate::problem::{HttpResponse, Problem};
use crate::queue::{Placement, Queue};
use headers::insert;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use serde::Serialize;
use serde_json::Value;
use spin_sdk::http::Request;
use std::rc::Rc;

/// The page at `/` (`page.html`, no external resources).
const PAGE: &str = include_str!("../page.html");

/// The configuration; an error is the operator's (answered 500 by the routes that need it).
type Loaded = anyhow::Result<Rc<Config>>;

pub async fn handle(request: Request) -> HttpResponse {
    let config = Config::get().await;
    let mut response = route(request, &config).await.unwrap_or_else(HttpResponse::from);
    if let Ok(config) = &config {
        count_response(config, &response).await;
    }
    // Spin sends a body of unknown length chunked, and its last write then waits for the
    // client's delayed ACK (~40 ms on a keep-alive connection): with the length
    // known, the response goes out in one piece.
    let length = response.body().len();
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// What a route does; `route` calls its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    CreateTask,
    GetTask,
    CancelTask,
    UserState,
    SetTier,
    CreateKey,
    ListKeys,
    RevokeKey,
    Log,
    Overview,
    Metrics,
    Health,
    Page,
    OpenApi,
}

/// A path: exact, or `prefix{id}suffix` where the id is the rest between them (it may hold
/// a `/`; each handler checks its id).
struct Route {
    prefix: &'static str,
    /// `None` for an exact path.
    id_then: Option<&'static str>,
    /// Methods and what they do; HEAD is served as GET wherever GET is.
    methods: &'static [(&'static str, Op)],
}

/// Every route; the first that matches a path wins (so `…/tier` comes before a user).
const ROUTES: &[Route] = &[
    Route { prefix: "/api/v1/task", id_then: None, methods: &[("POST", Op::CreateTask)] },
    Route { prefix: "/api/v1/task/", id_then: Some(""), methods: &[("GET", Op::GetTask), ("DELETE", Op::CancelTask)] },
    Route { prefix: "/api/v1/users/", id_then: Some("/tier"), methods: &[("PUT", Op::SetTier)] },
    Route { prefix: "/api/v1/users/", id_then: Some(""), methods: &[("GET", Op::UserState)] },
    Route { prefix: "/api/v1/keys", id_then: None, methods: &[("GET", Op::ListKeys), ("POST", Op::CreateKey)] },
    Route { prefix: "/api/v1/keys/", id_then: Some(""), methods: &[("DELETE", Op::RevokeKey)] },
    Route { prefix: "/api/v1/log", id_then: None, methods: &[("GET", Op::Log)] },
    Route { prefix: "/api/v1/overview", id_then: None, methods: &[("GET", Op::Overview)] },
    Route { prefix: "/metrics", id_then: None, methods: &[("GET", Op::Metrics)] },
    Route { prefix: "/healthz", id_then: None, methods: &[("GET", Op::Health)] },
    Route { prefix: "/", id_then: None, methods: &[("GET", Op::Page)] },
    Route { prefix: "/api/v1/openapi.json", id_then: None, methods: &[("GET", Op::OpenApi)] },
];

impl Route {
    /// The id if `path` is this route's (`""` for an exact path).
    fn matches<'p>(&self, path: &'p str) -> Option<&'p str> {
        match self.id_then {
            None => (path == self.prefix).then_some(""),
            Some(suffix) => path.strip_prefix(self.prefix)?.strip_suffix(suffix),
        }
    }

    fn op(&self, method: &Method) -> Option<Op> {
        let method = if method == Method::HEAD { "GET" } else { method.as_str() };
        self.methods.iter().find(|(name, _)| *name == method).map(|(_, op)| *op)
    }

    /// The `Allow` field of a 405 here: the methods in the table's order, HEAD after GET.
    fn allow(&self) -> String {
        let names =
            self.methods.iter().flat_map(|(name, _)| if *name == "GET" { vec!["GET", "HEAD"] } else { vec![*name] });
        names.collect::<Vec<_>>().join(", ")
    }
}

/// The route for `path` and the id in it.
fn find(path: &str) -> Option<(&'static Route, &str)> {
    ROUTES.iter().find_map(|route| Some((route, route.matches(path)?)))
}

async fn route(request: Request, config: &Loaded) -> Result<HttpResponse, Problem> {
    let path = request.uri().path().to_string();
    let Some((route, id)) = find(&path) else { return Err(Problem::not_found(format!("no route for {path}"))) };
    let op = route.op(request.method()).ok_or_else(|| Problem::method_not_allowed(&route.allow()))?;
    let (headers, query) = (request.headers(), request.uri().query());
    match op {
        Op::CreateTask => {
            let caller = caller(config, headers).await?;
            tasks::create(request, config, &caller).await
        }
        Op::GetTask => tasks::get(config, &caller(config, headers).await?, id).await,
        Op::CancelTask => tasks::cancel(config, &caller(config, headers).await?, id).await,
        Op::UserState => users::state(config, &caller(config, headers).await?, headers, id).await,
        Op::SetTier => users::set_tier(request, config, id).await,
        Op::CreateKey => keys::create(request, config).await,
        Op::ListKeys => keys::list(config, headers, query).await,
        Op::RevokeKey => keys::revoke(config, headers, id).await,
        Op::Log => admin::read_log(config, headers, query).await,
        Op::Overview => admin::overview(config, headers, query).await,
        Op::Metrics => admin::metrics(config, headers).await,
        Op::Health => admin::health(config).await,
        Op::Page => Ok(text_response(PAGE.to_string(), "text/html; charset=utf-8")),
        Op::OpenApi => {
            let config = configured(config)?;
            openapi::serve(config, &*auth_mode(config).await?)
        }
    }
}

/// Who is calling a route that acts for a user (`auth.rs`), or the answer that refuses them.
/// Every such route asks here, once.
async fn caller(config: &Loaded, headers: &HeaderMap) -> Result<Caller, Problem> {
    let config = configured(config)?;
    let auth = auth_mode(config).await?;
    auth::identify(&auth, config, headers).await.map_err(|refusal| match refusal {
        Refusal::Unauthenticated(code, why) => Problem::unauthenticated(code, why),
        Refusal::Unavailable(e) => Problem::unavailable(e),
        Refusal::Internal(e) => Problem::internal(e),
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

/// How callers prove who they are (read once per instance), or the 500 of a bad setting.
async fn auth_mode(config: &Config) -> Result<Rc<Auth>, Problem> {
    Auth::get(config).await.map_err(|e| Problem::internal(format!("configuration: {e}")))
}

/// The configuration, or the 500 for a route that cannot work without it.
fn configured(config: &Loaded) -> Result<&Config, Problem> {
    config.as_deref().map_err(|e| Problem::internal(format!("configuration: {e}")))
}

/// The answer to an admission: the task (200/202) with the rate-limit fields of its lane, or
/// the problem.
fn admission_response(config: &Config, outcome: Result<Outcome, AdmitError>) -> Result<HttpResponse, Problem> {
    match outcome {
        Ok(Outcome::Admitted { task, lane }) => Ok(counted(task_response(config, task, &lane, false)?)),
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
fn task_response(config: &Config, task: Task, lane: &LaneNow, replayed: bool) -> Result<HttpResponse, Problem> {
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
    let mut response = serialized_response(status, &body)?;
    response.headers_mut().extend(headers);
    Ok(response)
}

/// `name=value` pairs of a query string (a bare `name` has an empty value).
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query.unwrap_or("").split('&').filter(|p| !p.is_empty()).map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// A `user_id` query parameter (the overview's, the keys listing's): percent-decoded with
/// `+` as a space, then a user id by `tasks::is_user_id`; else the 400.
fn query_user_id(value: &str) -> Result<String, Problem> {
    percent_decode(value, true).filter(|id| tasks::is_user_id(id)).ok_or_else(|| {
        Problem::bad_request(format!(
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
fn serialized_response(status: StatusCode, body: &impl Serialize) -> Result<HttpResponse, Problem> {
    let text = serde_json::to_string(body).map_err(|e| Problem::internal(format!("serialising the answer: {e}")))?;
    let mut response = Response::new(text);
    *response.status_mut() = status;
    insert(response.headers_mut(), header::CONTENT_TYPE, "application/json");
    Ok(response)
}

fn json_response(status: StatusCode, body: &Value, headers: HeaderMap) -> HttpResponse {
    let mut response = Response::new(body.to_string());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    insert(response.headers_mut(), header::CONTENT_TYPE, "application/json");
    response
}

/// `{"status": "ok"}`-style bodies.
fn ok_json(body: Value) -> Result<HttpResponse, Problem> {
    Ok(json_response(StatusCode::OK, &body, HeaderMap::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_give_the_handler_and_the_allow_field() {
        fn route(path: &str, method: Method) -> Option<(Option<Op>, &str, String)> {
            find(path).map(|(route, id)| (route.op(&method), id, route.allow()))
        }
        let allow = |path: &str| find(path).map(|(route, _)| route.allow()).unwrap_or_default();
        assert_eq!(route("/api/v1/task", Method::POST), Some((Some(Op::CreateTask), "", "POST".into())));
        assert_eq!(route("/api/v1/task", Method::HEAD), Some((None, "", "POST".into())));
        assert_eq!(
            route("/api/v1/task/abc", Method::HEAD),
            Some((Some(Op::GetTask), "abc", "GET, HEAD, DELETE".into()))
        );
        assert_eq!(route("/api/v1/task/", Method::DELETE).map(|r| (r.0, r.1)), Some((Some(Op::CancelTask), "")));
        assert_eq!(route("/api/v1/users/a/b/tier", Method::PUT).map(|r| (r.0, r.1)), Some((Some(Op::SetTier), "a/b")));
        assert_eq!(route("/api/v1/users/tier", Method::GET).map(|r| (r.0, r.1)), Some((Some(Op::UserState), "tier")));
        assert_eq!(route("/api/v1/users/u/tier", Method::GET).map(|r| r.0), Some(None));
        assert_eq!(route("/api/v1/keys/k1", Method::DELETE).map(|r| (r.0, r.1)), Some((Some(Op::RevokeKey), "k1")));
        assert_eq!(route("/api/v1/keys", Method::HEAD).map(|r| r.0), Some(Some(Op::ListKeys)));
        // The fields the hand-written routing sent before the table.
        for (path, allowed) in [
            ("/api/v1/keys", "GET, HEAD, POST"),
            ("/api/v1/keys/x", "DELETE"),
            ("/api/v1/users/u", "GET, HEAD"),
            ("/api/v1/users/u/tier", "PUT"),
            ("/api/v1/log", "GET, HEAD"),
            ("/api/v1/overview", "GET, HEAD"),
            ("/metrics", "GET, HEAD"),
            ("/healthz", "GET, HEAD"),
            ("/", "GET, HEAD"),
            ("/api/v1/openapi.json", "GET, HEAD"),
        ] {
            assert_eq!(allow(path), allowed, "{path}");
        }
        assert!(find("/api/v1/tasks").is_none() && find("/api/v1").is_none() && find("/metrics/").is_none());
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
}
