//! `GET /api/v1/users/{user_id}` (where one user stands, per lane) and
//! `PUT /api/v1/users/{user_id}/tier` (their tier, live on every replica). The id is
//! percent-encoded in the path. Setting a tier takes the admin token; reading the state, the
//! admin token or (with `auth` on) the user's own credentials.

use super::admin::admin;
use super::answer::{Loaded, configured, ok_json};
use super::headers::rate_windows;
use super::tasks::read_request;
use crate::auth::Caller;
use crate::config::LedgerBackend;
use crate::keys::{LaneKey, UserKey};
use crate::kv_ledger;
use crate::ledger::LedgerError;
use crate::policy::{DEFAULT_KIND, Policy};
use crate::problem::{HttpResponse, Problem};
use crate::queue::Queue;
use crate::slot;
use http::HeaderMap;
use serde_json::{Map, Value, json};
use spin_sdk::http::Request;
use task_core::request::decode_user_id;
use task_core::user::{MAX_USER_ID_CHARS, UserId};

/// Largest `PUT …/tier` body.
const MAX_TIER_BODY: usize = 1024;

fn user_id(encoded: &str) -> Result<UserId, Problem> {
    decode_user_id(encoded).ok_or_else(|| {
        Problem::bad_request(format!(
            "the user id must be 1 to {MAX_USER_ID_CHARS} characters of UTF-8, percent-encoded"
        ))
    })
}

/// Where one user stands, in work bounded whatever their backlog: their tier and, per kind,
/// queued tasks, the next task, the next slot and what is left of each window. The
/// `default` kind's lane is also given at the top level, as before kinds existed.
pub async fn state(
    config: &Loaded,
    caller: &Caller,
    headers: &HeaderMap,
    encoded: &str,
) -> Result<HttpResponse, Problem> {
    // Without authentication the admin token guards it, as before `auth` existed; with it,
    // the user themself may look too.
    let config = match caller {
        Caller::Anyone => admin(config, headers)?,
        _ => configured(config)?,
    };
    let user_id = user_id(encoded)?;
    if !caller.may_act_for(&user_id) {
        return Err(Problem::forbidden("a caller may look only at their own user"));
    }
    let user = UserKey::new(&user_id);
    let kinds: Vec<&str> = config.policies.kinds().collect();
    let lanes: Vec<(LaneKey, Option<String>)> = kinds
        .iter()
        .map(|kind| {
            let lane = LaneKey::new(&user, kind);
            let ledger = (config.ledger == LedgerBackend::Redis).then(|| config.keys.ledger(&lane));
            (lane, ledger)
        })
        .collect();
    let state = Queue::connect(config)
        .await?
        .run(&crate::scripts::ReadUserState { tier_key: &config.keys.tier(&user), lanes: &lanes })
        .await?;
    let no_windows = Policy::default();
    let mut per_kind = Map::new();
    for ((kind, (lane, _)), lane_state) in kinds.iter().zip(&lanes).zip(&state.lanes) {
        let recent = kv_ledger::recent_slots(config.ledger, &config.keys.ledger(lane), lane_state.ledger.as_deref())
            .map_err(|e| match e {
                LedgerError::Unavailable(e) => Problem::unavailable(e),
                e => Problem::internal(format!("the ledger of {user_id:?}, kind {kind}: {e:?}")),
            })?;
        let policy = config.policies.resolve(kind, state.tier.as_deref()).unwrap_or(&no_windows);
        let view = json!({
            "queued": lane_state.queued,
            "next_task": lane_state.next_task.as_ref().map(|(task_id, slot)| json!({"task_id": task_id, "slot": slot})),
            "next_slot": slot::next_slot(policy.windows(), &recent, state.now, 1),
            "remaining": rate_windows(policy, &recent, state.now),
            "recent_completions": lane_state.recent_completions.iter().map(|(at, _)| at).collect::<Vec<_>>(),
        });
        per_kind.insert(kind.to_string(), view);
    }
    let default_lane = per_kind.get(DEFAULT_KIND).cloned().unwrap_or(Value::Null);
    let mut body = json!({
        "user_id": user_id,
        "now": state.now,
        "tier": state.tier,
        "limits": {"per_second": config.per_second, "per_minute": config.per_minute},
        "kinds": per_kind,
    });
    // The default lane's fields at the top level, as before kinds existed.
    if let (Some(body), Value::Object(lane)) = (body.as_object_mut(), default_lane) {
        body.extend(lane);
    }
    ok_json(body)
}

/// Sets the user's tier (`{"tier": "pro"}`, or `null` for the built-in one). The next
/// admission of theirs on every replica reads it; queued tasks keep their slots.
pub async fn set_tier(request: Request, config: &Loaded, encoded: &str) -> Result<HttpResponse, Problem> {
    let config = admin(config, request.headers())?;
    // The body is read before the path's id is judged: an answer sent while the client is
    // still sending its body can be cut off when the connection closes with the body unread
    // (seen on the bundled host, 3 of 300 keep-alive PUTs with a bad id).
    let (_, body) = read_request(request, MAX_TIER_BODY).await?;
    let user_id = user_id(encoded)?;
    let shape = r#"the body must be {"tier": "<name>"}, or {"tier": null} for the built-in tier"#;
    let tier = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(members)) if members.len() == 1 => match members.get("tier") {
            Some(Value::Null) => None,
            Some(Value::String(tier)) if config.policies.is_tier(tier) => Some(tier.clone()),
            Some(Value::String(tier)) => {
                let known = config.policies.tier_names();
                return Err(Problem::bad_request(format!("tier {tier:?} is not one of the configured tiers: {known}")));
            }
            _ => return Err(Problem::bad_request(shape)),
        },
        Ok(_) => return Err(Problem::bad_request(shape)),
        Err(e) => return Err(Problem::bad_request(format!("{shape}: {e}"))),
    };
    let user = UserKey::new(&user_id);
    Queue::connect(config).await?.set_tier(&config.keys.tier(&user), tier.as_deref()).await?;
    ok_json(json!({"user_id": user_id, "tier": tier}))
}
