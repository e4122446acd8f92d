//! The operator's routes: the task log, the page's overview, `/metrics`, `/healthz`, and the
//! admin token that guards them (and the user routes).

use super::answer::{
    Loaded, configured, counted, json_response, query_pairs, query_user_id, serialized_response, text_response,
};
use super::headers::insert;
use crate::config::Config;
use crate::keys::{LaneKey, UserKey};
use crate::policy::{DEFAULT_KIND, Policy};
use crate::problem::{HttpResponse, Problem};
use crate::queue::{Completion, Queue};
use http::{HeaderMap, HeaderName, Response, StatusCode, header};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use task_core::request::{LAST_STREAM_ID, parse_stream_id};

/// Log page size: default and most.
const LOG_PAGE_DEFAULT: u32 = 1_000;
const LOG_PAGE_MAX: u32 = 10_000;
/// Bounds of the overview, so a refresh costs the same with 10 or 10,000 users.
const OVERVIEW_SOONEST: usize = 20;
const OVERVIEW_RECENT: usize = 50;
const OVERVIEW_QUEUED: usize = 100;

/// The configuration for an admin route, or the answer that refuses the request.
pub fn admin<'c>(config: &'c Loaded, headers: &HeaderMap) -> Result<&'c Config, Problem> {
    let config = configured(config)?;
    if authorized(config, headers) { Ok(config) } else { Err(Problem::unauthorized()) }
}

/// Admin routes are open when no token is configured; otherwise the bearer token must
/// match (`auth::is_admin`).
fn authorized(config: &Config, headers: &HeaderMap) -> bool {
    crate::auth::is_admin(config, headers)
}

pub async fn read_log(config: &Loaded, headers: &HeaderMap, query: Option<&str>) -> Result<HttpResponse, Problem> {
    let config = admin(config, headers)?;
    let mut after = None;
    let mut limit = LOG_PAGE_DEFAULT;
    for (name, value) in query_pairs(query) {
        match name {
            "after" => {
                let cursor = "after must be a cursor from a previous page (like 1700000000000-0)";
                after = Some(parse_stream_id(value).ok_or_else(|| Problem::bad_request(cursor))?);
            }
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=LOG_PAGE_MAX).contains(&n) => limit = n,
                _ => {
                    return Err(Problem::bad_request(format!("limit must be a whole number from 1 to {LOG_PAGE_MAX}")));
                }
            },
            _ => return Err(Problem::bad_request(format!("unknown query parameter {name:?}; use after and limit"))),
        }
    }
    // Written as Redis writes ids (no leading zeros) for the query and the Next-Cursor.
    let after = after.map(|(ms, seq)| format!("{ms}-{seq}"));
    let queue = Queue::connect(config).await?;
    // Nothing can follow the largest id, and Redis refuses to start a range after it.
    let page = match after.as_deref() {
        Some(LAST_STREAM_ID) => Vec::new(),
        _ => queue.log_page(after.as_deref(), limit).await?,
    };
    let ndjson =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/x-ndjson"));
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
        insert(response.headers_mut(), HeaderName::from_static("next-cursor"), &cursor);
    }
    Ok(response)
}

/// `GET /api/v1/overview[?user_id=<id>]`: a bounded snapshot for the page, with the
/// configured kinds and their windows, and the watched user's lanes.
pub async fn overview(config: &Loaded, headers: &HeaderMap, query: Option<&str>) -> Result<HttpResponse, Problem> {
    let config = admin(config, headers)?;
    let mut user_id = None;
    for (name, value) in query_pairs(query) {
        match name {
            "user_id" => user_id = Some(query_user_id(value)?),
            _ => return Err(Problem::bad_request(format!("unknown query parameter {name:?}; use user_id"))),
        }
    }
    let kinds: Vec<&str> = config.policies.kinds().collect();
    let (tier_key, lanes): (String, Vec<LaneKey>) = match &user_id {
        Some(id) => {
            let user = UserKey::new(id);
            (config.keys.tier(&user), kinds.iter().map(|kind| LaneKey::new(&user, kind)).collect())
        }
        None => (String::new(), Vec::new()),
    };
    let queue = Queue::connect(config).await?;
    let snapshot = queue
        .run(&crate::scripts::ReadOverview {
            tier_key: &tier_key,
            lanes: &lanes,
            soonest: OVERVIEW_SOONEST,
            recent: OVERVIEW_RECENT,
            queued: OVERVIEW_QUEUED,
        })
        .await?;
    let next_due = snapshot
        .next_due
        .iter()
        .map(|(user_id, kind, queued, next_slot)| NextDue { user_id, kind, queued: *queued, next_slot: *next_slot })
        .collect();
    let tier = snapshot.tier.as_deref();
    let user = user_id.map(|user_id| {
        let lanes: BTreeMap<&str, LaneOverview> = kinds
            .iter()
            .zip(&snapshot.lanes)
            .map(|(kind, lane)| {
                let queued = lane
                    .queued
                    .iter()
                    .map(|q| QueuedView {
                        task_id: &q.task_id,
                        slot: q.slot,
                        cost: q.cost,
                        payload: q.payload.as_deref(),
                    })
                    .collect();
                let completed = lane.completed.iter().map(|(at, _)| *at).collect();
                let completed_units = lane.completed.iter().map(|(_, units)| *units).collect();
                let windows = config.policies.resolve(kind, tier).map(window_views).unwrap_or_default();
                (*kind, LaneOverview { queued, completed, completed_units, windows })
            })
            .collect();
        let default_lane = lanes.get(DEFAULT_KIND).map(|lane| (lane.queued.clone(), lane.completed.clone()));
        let (queued, completed) = default_lane.unwrap_or_default();
        UserView { user_id, tier, queued, completed, lanes }
    });
    let windows =
        kinds.iter().filter_map(|kind| Some((*kind, window_views(config.policies.resolve(kind, None)?)))).collect();
    let body = OverviewView {
        now: snapshot.now,
        limits: json!({"per_second": config.per_second, "per_minute": config.per_minute}),
        kinds: windows,
        queued_tasks: snapshot.queued_tasks,
        waiting_users: snapshot.waiting_users,
        next_due,
        recent: &snapshot.recent,
        claims: &snapshot.claims,
        user,
    };
    serialized_response(StatusCode::OK, &body)
}

/// A policy's windows as the overview names them.
fn window_views(policy: &Policy) -> Vec<WindowView<'_>> {
    policy.named().map(|(name, w)| WindowView { name, q: w.quota, w: w.window_ms / 1000 }).collect()
}

/// The overview's body. Serialised from these types rather than built as a `Value`, so that
/// payloads go out as sent (a `Value` would reorder their keys).
#[derive(Serialize)]
struct OverviewView<'a> {
    now: i64,
    limits: serde_json::Value,
    /// Each kind's windows for the built-in tier.
    kinds: BTreeMap<&'a str, Vec<WindowView<'a>>>,
    queued_tasks: i64,
    waiting_users: i64,
    next_due: Vec<NextDue<'a>>,
    recent: &'a [Completion],
    /// Pulled tasks in workers' hands, soonest deadline first.
    claims: &'a [crate::scripts::OpenClaim],
    user: Option<UserView<'a>>,
}

#[derive(Serialize)]
struct WindowView<'a> {
    name: &'a str,
    q: u32,
    w: i64,
}

#[derive(Serialize)]
struct NextDue<'a> {
    user_id: &'a str,
    kind: &'a str,
    queued: i64,
    next_slot: i64,
}

/// The watched user: the `default` lane at the top level (as before kinds existed), and
/// every lane by kind.
#[derive(Serialize)]
struct UserView<'a> {
    user_id: String,
    /// `null` for the built-in tier.
    tier: Option<&'a str>,
    queued: Vec<QueuedView<'a>>,
    completed: Vec<i64>,
    lanes: BTreeMap<&'a str, LaneOverview<'a>>,
}

#[derive(Serialize)]
struct LaneOverview<'a> {
    queued: Vec<QueuedView<'a>>,
    completed: Vec<i64>,
    /// Each completion's units, parallel to `completed`.
    completed_units: Vec<u32>,
    /// The kind's windows for the user's tier.
    windows: Vec<WindowView<'a>>,
}

#[derive(Clone, Serialize)]
struct QueuedView<'a> {
    task_id: &'a str,
    slot: i64,
    cost: u32,
    /// `null` when the task has none.
    payload: Option<&'a RawValue>,
}

/// `GET /metrics`: the shared counters in the Prometheus text format.
pub async fn metrics(config: &Loaded, headers: &HeaderMap) -> Result<HttpResponse, Problem> {
    let config = admin(config, headers)?;
    let counters = Queue::connect(config).await?.run(&crate::scripts::Metrics).await?;
    Ok(text_response(crate::metrics::render(&counters), crate::metrics::CONTENT_TYPE))
}

pub async fn health(config: &Loaded) -> Result<HttpResponse, Problem> {
    let queue = Queue::connect(configured(config)?).await?;
    // Redis answering the sweep is the health check; and so a probe doubles as the sweep
    // that restarts draining after every drainer was down.
    queue.run(&crate::scripts::Sweep { probe: true }).await?;
    Ok(counted(json_response(StatusCode::OK, &json!({"status": "ok"}), HeaderMap::new())))
}
