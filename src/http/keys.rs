//! The API keys of `auth = api_key` and worker keys (`auth.rs`), all under the admin token:
//! `POST /api/v1/keys` makes one for a user (`{"user_id"}`) or a worker (`{"worker": true,
//! "kinds": [...]}`, pulled kinds only) and answers it once, `GET /api/v1/keys?user_id=`
//! lists a user's keys without their secrets, and `DELETE /api/v1/keys/{key_id}` revokes one
//! (a worker's too).

use super::admin::admin;
use super::answer::{Loaded, ok_json, query_pairs, query_user_id, serialized_response};
use super::tasks::read_request;
use crate::auth;
use crate::problem::{HttpResponse, Problem};
use crate::queue::Queue;
use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use spin_sdk::http::Request;
use task_core::credentials::{is_key_id, key_digest};
use task_core::request::user_id_of;

/// Largest `POST /api/v1/keys` body.
const MAX_KEY_BODY: usize = 1024;

/// The body of `POST /api/v1/keys` (other members are ignored, as for a task).
#[derive(Deserialize)]
struct KeyRequest<'a> {
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    worker: Option<bool>,
    kinds: Option<Vec<String>>,
}

#[derive(Serialize)]
struct NewKey<'a> {
    key_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kinds: Option<&'a [String]>,
    /// The whole key: shown here once, never stored.
    key: &'a str,
    created_at: i64,
}

pub async fn create(request: Request, config: &Loaded) -> Result<HttpResponse, Problem> {
    let config = admin(config, request.headers())?;
    let (_, body) = read_request(request, MAX_KEY_BODY).await?;
    let shape =
        r#"the body must be a JSON object {"user_id": "<id>"} or {"worker": true, "kinds": ["<pulled kind>", ...]}"#;
    // A struct also deserialises from a JSON array: only an object may name the user.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::bad_request(shape));
    }
    let (user_id, kinds) = match serde_json::from_slice::<KeyRequest>(&body) {
        Ok(KeyRequest { user_id: Some(_), worker: Some(true), .. }) => {
            return Err(Problem::bad_request(format!("a key is a user's or a worker's, not both: {shape}")));
        }
        Ok(KeyRequest { worker: Some(true), kinds, .. }) => (String::new(), Some(worker_kinds(config, kinds)?)),
        Ok(KeyRequest { user_id: Some(raw), .. }) => (user_id_of(raw).map_err(Problem::bad_request)?.to_string(), None),
        Ok(KeyRequest { user_id: None, .. }) => return Err(Problem::bad_request(shape)),
        Err(e) => return Err(Problem::bad_request(format!("{shape}: {e}"))),
    };
    let (key_id, key) = auth::new_api_key();
    let queue = Queue::connect(config).await?;
    let created_at = queue
        .run(&crate::scripts::KeyCreate {
            keys: &config.keys,
            key_id: &key_id,
            user_id: &user_id,
            worker_kinds: kinds.as_deref(),
            digest: &key_digest(&key),
        })
        .await?;
    let body = NewKey { key_id: &key_id, user_id: &user_id, kinds: kinds.as_deref(), key: &key, created_at };
    let mut response = serialized_response(StatusCode::CREATED, &body)?;
    super::headers::insert(response.headers_mut(), header::LOCATION, &format!("/api/v1/keys/{key_id}"));
    // The key is a credential: no cache may keep the answer.
    super::headers::insert(response.headers_mut(), header::CACHE_CONTROL, "no-store");
    Ok(response)
}

/// A worker key's kinds: one or more, each a kind this configuration lets workers pull.
fn worker_kinds(config: &crate::config::Config, kinds: Option<Vec<String>>) -> Result<Vec<String>, Problem> {
    let pulled = config.policies.pulled_kinds();
    let kinds = kinds.filter(|k| !k.is_empty()).ok_or_else(|| {
        Problem::bad_request(format!("a worker key names its kinds: \"kinds\": [...] of {}", pulled.join(", ")))
    })?;
    match kinds.iter().find(|k| !config.policies.is_pulled(k)) {
        Some(kind) => Err(Problem::bad_request(format!(
            "kinds: {kind:?} is not a kind workers pull (those are: {})",
            if pulled.is_empty() { "none".to_string() } else { pulled.join(", ") }
        ))),
        None => Ok(kinds),
    }
}

pub async fn list(config: &Loaded, headers: &HeaderMap, query: Option<&str>) -> Result<HttpResponse, Problem> {
    let config = admin(config, headers)?;
    let mut user_id = None;
    for (name, value) in query_pairs(query) {
        match name {
            "user_id" => user_id = Some(query_user_id(value)?),
            _ => return Err(Problem::bad_request(format!("unknown query parameter {name:?}; use user_id"))),
        }
    }
    let user_id = user_id.ok_or_else(|| Problem::bad_request("name the user: GET /api/v1/keys?user_id=<id>"))?;
    let keys =
        Queue::connect(config).await?.run(&crate::scripts::KeyList { keys: &config.keys, user_id: &user_id }).await?;
    let keys: Vec<Value> =
        keys.iter().map(|(key_id, created_at)| json!({"key_id": key_id, "created_at": created_at})).collect();
    ok_json(json!({"user_id": user_id, "keys": keys}))
}

pub async fn revoke(config: &Loaded, headers: &HeaderMap, key_id: &str) -> Result<HttpResponse, Problem> {
    let config = admin(config, headers)?;
    if !is_key_id(key_id) {
        return Err(Problem::not_found(format!("no key {key_id:?}")));
    }
    match Queue::connect(config).await?.run(&crate::scripts::KeyRevoke { keys: &config.keys, key_id }).await? {
        Some((user_id, revoked_at)) => ok_json(json!({"key_id": key_id, "user_id": user_id, "revoked_at": revoked_at})),
        None => Err(Problem::not_found(format!("no key {key_id}"))),
    }
}
