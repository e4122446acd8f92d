//! Who is calling, and what they may do (README "Authentication"). The `auth` variable picks
//! how a caller proves who they are:
//!
//! - `none`: nobody does; a task is for the body's `user_id` (local use, trusted callers);
//! - `jwt`: `Authorization: Bearer <JWT>`, verified here with the configured keys (no
//!   network fetch); the user is the claim `jwt_user_claim` names;
//! - `api_key`: `Authorization: Bearer <key>`, a key an admin made for one user; only its
//!   SHA-256 is in Redis, read on every request, so a revoked key is refused by every replica
//!   at once.
//!
//! In every mode the admin token (the `admin_token` variable) is the admin, and under `jwt`
//! or `api_key` a **worker key** (an API key the admin made with `"worker": true`) is a
//! worker: it may claim and report the tasks of its kinds only, and acts for no user. The
//! HTTP layer asks `identify` once per request and applies the rules of `Caller`.

use crate::config::Config;
use crate::queue::{Queue, StoreError};
use http::{HeaderMap, header};
use spin_sdk::variables;
use std::cell::RefCell;
use std::rc::Rc;
use task_core::credentials::{JwtSettings, JwtVerifier, api_key_text, bearer_token, key_digest, parse_api_key};
use task_core::user::UserId;

/// How callers prove who they are (the `auth` variable and the `jwt_*` ones).
pub enum Auth {
    None,
    Jwt(Box<JwtVerifier>),
    ApiKey,
}

/// Who made a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Caller {
    /// `auth = none`: anyone may act for any user, as before authentication existed.
    Anyone,
    /// The admin token: may act for and see every user.
    Admin,
    /// A verified user: may act for and see only themself.
    User(UserId),
    /// A worker key: may claim and report the tasks of these kinds, and nothing else.
    Worker(Vec<String>),
}

impl Caller {
    /// The user a new task is for: the body's `user_id` (which a verified user need not
    /// send, and may not send as anyone else's), or the refusal.
    pub fn task_user(&self, named: Option<UserId>) -> Result<UserId, Denied> {
        match (self, named) {
            (Caller::Worker(_), _) => Err(Denied::Worker),
            (Caller::User(me), Some(named)) if named != *me => Err(Denied::OtherUser),
            (Caller::User(me), _) => Ok(me.clone()),
            (_, Some(named)) => Ok(named),
            (_, None) => Err(Denied::NoUser),
        }
    }

    /// Whether the caller may see or change what belongs to `user_id`.
    pub fn may_act_for(&self, user_id: &str) -> bool {
        match self {
            Caller::Anyone | Caller::Admin => true,
            Caller::User(me) => me.as_str() == user_id,
            Caller::Worker(_) => false,
        }
    }

    /// Whether the caller may claim and report the tasks of `kind` (workers that pull).
    pub fn may_work_on(&self, kind: &str) -> bool {
        match self {
            Caller::Anyone | Caller::Admin => true,
            Caller::Worker(kinds) => kinds.iter().any(|k| k == kind),
            Caller::User(_) => false,
        }
    }

    /// The kinds the caller may report for (`None`: any), as `report.lua` checks them.
    pub fn worker_kinds(&self) -> Option<&[String]> {
        match self {
            Caller::Worker(kinds) => Some(kinds),
            Caller::User(_) => Some(&[]),
            Caller::Anyone | Caller::Admin => None,
        }
    }
}

/// Why a new task's user could not be settled.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// The body named no `user_id` and the caller is nobody in particular: a 400.
    NoUser,
    /// A verified user named someone else: a 403.
    OtherUser,
    /// A worker key acts for no user: a 403.
    Worker,
}

/// Why a request has no caller.
#[derive(Debug)]
pub enum Refusal {
    /// A 401: what is wrong with the credentials, never repeating them.
    Unauthenticated(&'static str, String),
    /// Redis could not be asked about an API key: a 503.
    Unavailable(String),
    /// Redis answered something unexpected: a 500.
    Internal(String),
}

thread_local! {
    static LOADED: RefCell<Option<Rc<Auth>>> = const { RefCell::new(None) };
}

impl Auth {
    /// The mode, read on this instance's first request and kept. Only the HTTP component
    /// reads it, so the drainer never holds a secret.
    pub async fn get(config: &Config) -> anyhow::Result<Rc<Auth>> {
        if let Some(auth) = LOADED.with_borrow(|a| a.clone()) {
            return Ok(auth);
        }
        let auth = Rc::new(Auth::load(config).await?);
        LOADED.set(Some(auth.clone()));
        Ok(auth)
    }

    async fn load(config: &Config) -> anyhow::Result<Auth> {
        let auth = match get("auth").await?.trim() {
            "none" => return Ok(Auth::None),
            "jwt" => Auth::Jwt(Box::new(
                JwtVerifier::new(&JwtSettings {
                    hs256_secret: &get("jwt_hs256_secret").await?,
                    public_keys: &get("jwt_public_keys").await?,
                    issuer: &get("jwt_issuer").await?,
                    audience: &get("jwt_audience").await?,
                    user_claim: &get("jwt_user_claim").await?,
                })
                .map_err(|e| anyhow::anyhow!("auth = jwt: {e}"))?,
            )),
            "api_key" => Auth::ApiKey,
            other => anyhow::bail!("variable auth must be none, jwt or api_key, not {other:?}"),
        };
        // Without an admin token the admin routes are open, and anyone could make keys or
        // read every user's log: with authentication on, that would undo it.
        if config.admin_token.is_none() {
            anyhow::bail!("variable auth turns authentication on, so admin_token must be set too");
        }
        Ok(auth)
    }
}

async fn get(name: &str) -> anyhow::Result<String> {
    variables::get(name).await.map_err(|e| anyhow::anyhow!("variable {name}: {e:?}"))
}

/// Who sent `headers`, by `auth`'s rules.
pub async fn identify(auth: &Auth, config: &Config, headers: &HeaderMap) -> Result<Caller, Refusal> {
    if matches!(auth, Auth::None) {
        return Ok(Caller::Anyone);
    }
    let token = bearer(headers)?;
    if is_admin_token(config, token) {
        return Ok(Caller::Admin);
    }
    match auth {
        Auth::None => Ok(Caller::Anyone),
        // A key of ours is no JWT: under `jwt` it may still be a worker key.
        Auth::Jwt(_) if parse_api_key(token).is_some() => match api_key_caller(config, token).await? {
            worker @ Caller::Worker(_) => Ok(worker),
            _ => Err(Refusal::Unauthenticated(
                "invalid_token",
                "under auth = jwt an API key is accepted only as a worker key".to_string(),
            )),
        },
        Auth::Jwt(verifier) => {
            verifier.verify(token).map(Caller::User).map_err(|why| Refusal::Unauthenticated("invalid_token", why))
        }
        Auth::ApiKey => api_key_caller(config, token).await,
    }
}

/// The user or worker an API key (`token`) belongs to, or the 401.
async fn api_key_caller(config: &Config, token: &str) -> Result<Caller, Refusal> {
    let presented = parse_api_key(token).ok_or_else(|| {
        Refusal::Unauthenticated("invalid_token", "the key is not one this API issues (tk_<id>_<secret>)".to_string())
    })?;
    let queue = Queue::connect(config).await.map_err(store_refusal)?;
    match queue.api_key(presented.key_id).await.map_err(store_refusal)? {
        Some(stored) if same_digest(&stored.digest, &key_digest(token)) => match stored.worker_kinds {
            Some(kinds) => Ok(Caller::Worker(kinds)),
            None => UserId::parse(stored.user_id)
                .map(Caller::User)
                .map_err(|e| Refusal::Internal(format!("API key {} names no valid user id ({e:?})", presented.key_id))),
        },
        _ => Err(Refusal::Unauthenticated("invalid_token", "the key is unknown or revoked".to_string())),
    }
}

fn store_refusal(e: StoreError) -> Refusal {
    match e {
        StoreError::Unavailable(e) => Refusal::Unavailable(format!("{e}; the API key could not be checked")),
        StoreError::Unexpected(e) => Refusal::Internal(e),
    }
}

/// The bearer token of `Authorization`, or the 401 that says what is wrong with it.
pub fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let missing = || Refusal::Unauthenticated("", "send Authorization: Bearer <token>".to_string());
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| {
        Refusal::Unauthenticated("invalid_request", "the Authorization header is not visible ASCII".to_string())
    })?;
    bearer_token(value).ok_or_else(|| {
        Refusal::Unauthenticated("invalid_request", "the Authorization header must be Bearer <token>".to_string())
    })
}

/// Whether `token` is the configured admin token, compared in constant time.
pub fn is_admin_token(config: &Config, token: &str) -> bool {
    config.admin_token.as_deref().is_some_and(|admin| same_digest(admin.as_bytes(), token.as_bytes()))
}

/// Equal bytes, compared without an early exit.
fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The admin token as a request's bearer token (the admin routes' check).
pub fn is_admin(config: &Config, headers: &HeaderMap) -> bool {
    match &config.admin_token {
        None => true,
        Some(_) => bearer(headers).is_ok_and(|token| is_admin_token(config, token)),
    }
}

/// A new key: (its id, the whole key as the caller will send it).
pub fn new_api_key() -> (String, String) {
    use spin_sdk::wasip3::random::random::get_random_u64;
    let key_id = format!("{:016x}", get_random_u64());
    let secret: String = (0..4).map(|_| format!("{:016x}", get_random_u64())).collect();
    let key = api_key_text(&key_id, &secret);
    (key_id, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_a_task_is_for() {
        let id = |id: &str| UserId::parse(id).unwrap_or_else(|e| panic!("{id:?}: {e:?}"));
        let alice = Caller::User(id("alice"));
        assert_eq!(alice.task_user(None), Ok(id("alice")));
        assert_eq!(alice.task_user(Some(id("alice"))), Ok(id("alice")));
        assert_eq!(alice.task_user(Some(id("bob"))), Err(Denied::OtherUser));
        assert_eq!(Caller::Admin.task_user(Some(id("bob"))), Ok(id("bob")));
        assert_eq!(Caller::Admin.task_user(None), Err(Denied::NoUser));
        assert_eq!(Caller::Anyone.task_user(None), Err(Denied::NoUser));
        assert!(alice.may_act_for("alice") && !alice.may_act_for("bob") && !alice.may_act_for("alice "));
        assert!(Caller::Admin.may_act_for("bob") && Caller::Anyone.may_act_for("bob"));
        let worker = Caller::Worker(vec!["render".to_string()]);
        assert_eq!(worker.task_user(Some(id("bob"))), Err(Denied::Worker));
        assert!(!worker.may_act_for("bob") && worker.may_work_on("render") && !worker.may_work_on("mail"));
        assert!(!alice.may_work_on("render") && Caller::Admin.may_work_on("x") && Caller::Anyone.may_work_on("x"));
        assert_eq!(worker.worker_kinds().map(<[String]>::len), Some(1));
        assert_eq!(Caller::Admin.worker_kinds(), None);
    }
}
