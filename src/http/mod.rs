//! The HTTP API: the route table (`ROUTES`: the handler of a path and method, and the `Allow`
//! field of a 405), and the answers to admissions. Handlers return `Result<HttpResponse,
//! Problem>`; `handle` turns a `Problem` into its answer. One file per resource, each handler
//! parse → call → answer:
//!
//! - `tasks`: `POST /api/v1/task`, `GET` and `DELETE /api/v1/task/{id}`, and the body rules;
//! - `users`: `GET /api/v1/users/{id}` and `PUT /api/v1/users/{id}/tier`;
//! - `admin`: the log, the page's overview, `/metrics`, `/healthz`, and the admin token;
//! - `keys`: `POST`/`GET /api/v1/keys` and `DELETE /api/v1/keys/{id}` (`auth = api_key`, and
//!   worker keys);
//! - `claims`: `POST /api/v1/claims` and `POST /api/v1/task/{id}/outcome` (workers that pull);
//! - `openapi`: the contract, fitted to this deployment's kinds, tiers and authentication;
//! - `headers`: the rate-limit fields, from the windows of a task's policy.

pub mod admin;
mod answer;
mod claims;
pub mod headers;
mod keys;
mod openapi;
pub mod tasks;
pub mod users;

use crate::auth::{self, Auth, Caller, Refusal};
use crate::config::Config;
use crate::problem::{HttpResponse, Problem};
use crate::queue::Queue;
use answer::{CountedByScript, Loaded, configured, text_response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use spin_sdk::http::Request;
use std::rc::Rc;

/// The page at `/` (`page.html`, no external resources).
const PAGE: &str = include_str!("../page.html");

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
    Claim,
    ReportOutcome,
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
    Route { prefix: "/api/v1/task/", id_then: Some("/outcome"), methods: &[("POST", Op::ReportOutcome)] },
    Route { prefix: "/api/v1/task/", id_then: Some(""), methods: &[("GET", Op::GetTask), ("DELETE", Op::CancelTask)] },
    Route { prefix: "/api/v1/claims", id_then: None, methods: &[("POST", Op::Claim)] },
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
        Op::Claim => {
            let caller = caller(config, headers).await?;
            claims::claim(request, config, &caller).await
        }
        Op::ReportOutcome => {
            let caller = caller(config, headers).await?;
            claims::outcome(request, config, &caller, id).await
        }
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

/// Counts the answer in the shared metrics unless a script already did. Best effort, and
/// skipped for 503s: Redis is what failed, and a second wait on it would only delay them.
async fn count_response(config: &Config, response: &HttpResponse) {
    if response.extensions().get::<CountedByScript>().is_some() || response.status() == StatusCode::SERVICE_UNAVAILABLE
    {
        return;
    }
    if let Ok(queue) = Queue::connect(config).await {
        let _ = queue.run(&crate::scripts::UnitScript::count_status(response.status().as_u16())).await;
    }
}

/// How callers prove who they are (read once per instance), or the 500 of a bad setting.
async fn auth_mode(config: &Config) -> Result<Rc<Auth>, Problem> {
    Auth::get(config).await.map_err(|e| Problem::internal(format!("configuration: {e}")))
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
        assert_eq!(
            route("/api/v1/task/abc/outcome", Method::POST).map(|r| (r.0, r.1)),
            Some((Some(Op::ReportOutcome), "abc"))
        );
        assert_eq!(route("/api/v1/task/abc/outcome", Method::GET).map(|r| r.0), Some(None));
        assert_eq!(route("/api/v1/claims", Method::POST).map(|r| r.0), Some(Some(Op::Claim)));
        // The fields the hand-written routing sent before the table.
        for (path, allowed) in [
            ("/api/v1/keys", "GET, HEAD, POST"),
            ("/api/v1/keys/x", "DELETE"),
            ("/api/v1/claims", "POST"),
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
}
