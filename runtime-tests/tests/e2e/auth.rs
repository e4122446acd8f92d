//! Authentication end to end (README "Authentication"), on a real redis-server and real host
//! processes: with `auth = jwt` every bad token is refused and a user acts only for themself;
//! with `auth = api_key` keys are made, listed and revoked by the admin, and a revoked key is
//! refused by every replica at once. `auth = none` is what every other test runs.

use crate::support;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::{Host, HostOptions, Redis, Reply, app_key, repo_root, request};
use task_core::keys::word;

const ADMIN_TOKEN: &str = "admin-t0ken";
const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "task-api";

fn fixture(name: &str) -> String {
    let path = repo_root().join("runtime-tests/fixtures/jwt").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn host(redis: &Redis, variables: &[(&str, &str)]) -> Host {
    let mut all = vec![("admin_token".to_string(), ADMIN_TOKEN.to_string())];
    all.extend(variables.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    Host::start(redis, &HostOptions { variables: all, lossy_cas: false })
}

fn call(host: &Host, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    request(&host.addr, method, path, &headers, body.as_bytes())
}

/// A 401 that challenges for a bearer token and does not repeat the one sent.
fn assert_unauthenticated(reply: &Reply, token: &str, says: &str) {
    assert_eq!(reply.status, 401, "{says}: {}", reply.body);
    assert!(reply.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{:?}", reply.headers);
    assert_eq!(reply.json()["type"], "urn:task-api:problem:unauthenticated");
    let detail = reply.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains(says), "{detail:?} should say {says:?}");
    assert!(token.is_empty() || !reply.body.contains(token), "the answer repeats the credentials: {}", reply.body);
}

fn claims(user: &str) -> Value {
    json!({"sub": user, "exp": now() + 300, "iss": ISSUER, "aud": AUDIENCE})
}

fn secret(bytes: &[u8]) -> EncodingKey {
    EncodingKey::from_secret(bytes).unwrap_or_else(|e| panic!("{e}"))
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, &secret(SECRET.as_bytes()), claims)
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(algorithm), claims, key).unwrap_or_else(|e| panic!("{e}"))
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Users A and B with JWTs: each acts, reads, cancels and inspects only as themself; the
/// admin token does everything; bad tokens of every kind are 401s; no token reaches a log
/// line or a metric.
#[test]
fn jwt_users_act_only_for_themselves_and_bad_tokens_are_refused() {
    let redis = Redis::start();
    let keys = format!("{}\n{}", fixture("rsa-public.pem"), fixture("ec-public.pem"));
    let host = host(
        &redis,
        &[
            ("auth", "jwt"),
            ("jwt_hs256_secret", SECRET),
            ("jwt_public_keys", &keys),
            ("jwt_issuer", ISSUER),
            ("jwt_audience", AUDIENCE),
        ],
    );
    let alice = hs256(&claims("alice"));
    let bob = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(fixture("ec-private.pem").as_bytes()).unwrap_or_else(|e| panic!("{e}")),
        &claims("bob"),
    );
    let alice_rs = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(fixture("rsa-private.pem").as_bytes()).unwrap_or_else(|e| panic!("{e}")),
        &claims("alice"),
    );

    // Refused, each for what is wrong with it.
    let with = |field: &str, value: Value| {
        let mut c = claims("alice");
        c[field] = value;
        hs256(&c)
    };
    let forged = sign(Algorithm::HS256, &secret(b"not the secret, but just as long!!"), &claims("alice"));
    let alg_none = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims("alice").to_string().as_bytes())
    );
    // Algorithm confusion: HS256 "signed" with the RSA public key, which a naive verifier
    // would take as the HMAC secret.
    let confused = sign(Algorithm::HS256, &secret(fixture("rsa-public.pem").as_bytes()), &claims("alice"));
    for (token, says) in [
        ("", "Bearer <token>"),
        (forged.as_str(), "signature"),
        (&with("exp", json!(now() - 600)), "expired"),
        (&with("nbf", json!(now() + 600)), "not valid yet"),
        (&with("aud", json!("another-api")), "audience"),
        (&with("iss", json!("https://elsewhere.test")), "issuer"),
        (&alg_none, "algorithm"),
        (&confused, "signature"),
        ("garbage", "algorithm"),
    ] {
        let sent = (!token.is_empty()).then_some(token);
        assert_unauthenticated(&call(&host, "POST", "/api/v1/task", sent, r#"{"user_id":"alice"}"#), token, says);
    }

    // Alice submits as herself, with or without naming herself, with either of her tokens.
    let first = call(&host, "POST", "/api/v1/task", Some(&alice), "{}");
    assert_eq!((first.status, first.json()["user_id"].clone()), (200, json!("alice")), "{}", first.body);
    let queued = call(&host, "POST", "/api/v1/task", Some(&alice_rs), r#"{"user_id":"alice"}"#);
    assert_eq!(queued.status, 202, "{}", queued.body);
    let queued_id = queued.json()["task_id"].as_str().unwrap_or_default().to_string();
    let as_bob = call(&host, "POST", "/api/v1/task", Some(&alice), r#"{"user_id":"bob"}"#);
    assert_eq!(as_bob.status, 403, "{}", as_bob.body);

    // Bob cannot see, cancel or inspect Alice's: 404 for her task, as for an unknown id.
    let path = format!("/api/v1/task/{queued_id}");
    assert_eq!(call(&host, "GET", &path, Some(&bob), "").status, 404);
    assert_eq!(call(&host, "DELETE", &path, Some(&bob), "").status, 404);
    assert_eq!(call(&host, "GET", &path, None, "").status, 401);
    assert_eq!(call(&host, "GET", "/api/v1/users/alice", Some(&bob), "").status, 403);
    let mine = call(&host, "GET", "/api/v1/users/alice", Some(&alice), "");
    assert_eq!((mine.status, mine.json()["queued"].clone()), (200, json!(1)), "{}", mine.body);
    assert_eq!(call(&host, "GET", &path, Some(&alice), "").json()["status"], "queued");
    let cancelled = call(&host, "DELETE", &path, Some(&alice), "");
    assert_eq!((cancelled.status, cancelled.json()["status"].clone()), (200, json!("cancelled")), "{}", cancelled.body);

    // The admin acts for anyone, naming them.
    assert_eq!(call(&host, "POST", "/api/v1/task", Some(ADMIN_TOKEN), "{}").status, 400);
    let for_carol = call(&host, "POST", "/api/v1/task", Some(ADMIN_TOKEN), r#"{"user_id":"carol"}"#);
    assert_eq!((for_carol.status, for_carol.json()["user_id"].clone()), (200, json!("carol")));
    assert_eq!(call(&host, "GET", "/api/v1/users/alice", Some(ADMIN_TOKEN), "").status, 200);
    // A user's token is not the admin's.
    assert_eq!(call(&host, "GET", "/api/v1/log", Some(&alice), "").status, 401);

    // No token in a log line or a metric.
    let metrics = call(&host, "GET", "/metrics", Some(ADMIN_TOKEN), "");
    let log = call(&host, "GET", "/api/v1/log", Some(ADMIN_TOKEN), "");
    let printed = host.stderr_text();
    for token in [&alice, &bob, &alice_rs, &forged, &ADMIN_TOKEN.to_string()] {
        let signature = token.rsplit('.').next().unwrap_or(token);
        for (name, text) in [("/metrics", &metrics.body), ("the log", &log.body), ("the host's output", &printed)] {
            assert!(!text.contains(signature), "{name} holds a credential");
        }
    }
}

/// Keys made by the admin act for their user on every replica; a revoked key is refused by
/// all three at once (the very next request), and nobody but the admin manages keys.
#[test]
fn api_keys_are_made_listed_and_revoked_across_replicas() {
    let redis = Redis::start();
    let replicas: Vec<Host> = (0..3).map(|_| host(&redis, &[("auth", "api_key")])).collect();
    let make = |user: &str| {
        let reply =
            call(&replicas[0], "POST", "/api/v1/keys", Some(ADMIN_TOKEN), &json!({"user_id": user}).to_string());
        assert_eq!(reply.status, 201, "{}", reply.body);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        let body = reply.json();
        assert_eq!(body["user_id"], user);
        (body["key_id"].as_str().unwrap_or_default().to_string(), body["key"].as_str().unwrap_or_default().to_string())
    };
    let (alice_id, alice) = make("alice");
    let (_, bob) = make("bob");
    let (spare_id, _) = make("alice");

    // Only the admin manages keys.
    assert_eq!(call(&replicas[1], "POST", "/api/v1/keys", Some(&alice), r#"{"user_id":"alice"}"#).status, 401);
    assert_eq!(call(&replicas[1], "POST", "/api/v1/keys", Some(ADMIN_TOKEN), r#"{"name":"alice"}"#).status, 400);
    let listed = call(&replicas[2], "GET", "/api/v1/keys?user_id=alice", Some(ADMIN_TOKEN), "");
    assert_eq!(listed.status, 200, "{}", listed.body);
    let listing = listed.json();
    let mut ids: Vec<&str> =
        listing["keys"].as_array().map(|k| k.iter().filter_map(|k| k["key_id"].as_str()).collect()).unwrap_or_default();
    ids.sort_unstable();
    let mut expected = vec![alice_id.as_str(), spare_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(!listed.body.contains(&alice[alice.len() - 64..]), "a listing shows a secret");
    // Only a hash is stored: no Redis value holds the key.
    let stored = redis.query::<Vec<String>>(&["HGETALL", &app_key(&format!("{}{alice_id}", word::API_KEY))]).join("\n");
    assert!(stored.contains("alice") && !stored.contains(&alice[alice.len() - 64..]), "{stored}");

    // Alice's key works on every replica, for her only.
    let mut task_ids = Vec::new();
    for replica in &replicas {
        let reply = call(replica, "POST", "/api/v1/task", Some(&alice), "{}");
        assert!(matches!(reply.status, 200 | 202), "{}", reply.body);
        assert_eq!(reply.json()["user_id"], "alice");
        task_ids.push(reply.json()["task_id"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(call(&replicas[0], "POST", "/api/v1/task", Some(&alice), r#"{"user_id":"bob"}"#).status, 403);
    let path = format!("/api/v1/task/{}", task_ids[2]);
    assert_eq!(call(&replicas[1], "GET", &path, Some(&bob), "").status, 404);
    assert_eq!(call(&replicas[1], "DELETE", &path, Some(&bob), "").status, 404);
    assert_eq!(call(&replicas[1], "GET", &path, Some(&alice), "").status, 200);
    assert_eq!(call(&replicas[2], "GET", "/api/v1/users/alice", Some(&bob), "").status, 403);
    assert_eq!(call(&replicas[2], "GET", "/api/v1/users/bob", Some(&bob), "").status, 200);

    // Keys of the right shape that were never made, or tampered with, are refused.
    let unknown = format!("tk_{}_{}", "0".repeat(16), "0".repeat(64));
    let tampered = format!("{}{}", &alice[..alice.len() - 1], if alice.ends_with('0') { '1' } else { '0' });
    for (token, says) in [
        (unknown.as_str(), "unknown or revoked"),
        (&tampered, "unknown or revoked"),
        ("tk_short", "not one this API issues"),
    ] {
        assert_unauthenticated(&call(&replicas[0], "POST", "/api/v1/task", Some(token), "{}"), token, says);
    }

    // Revoked on one replica, refused by every replica on its very next request.
    let revoked = call(&replicas[0], "DELETE", &format!("/api/v1/keys/{alice_id}"), Some(ADMIN_TOKEN), "");
    assert_eq!((revoked.status, revoked.json()["user_id"].clone()), (200, json!("alice")), "{}", revoked.body);
    for replica in &replicas {
        assert_unauthenticated(
            &call(replica, "POST", "/api/v1/task", Some(&alice), "{}"),
            &alice,
            "unknown or revoked",
        );
    }
    assert_eq!(call(&replicas[0], "DELETE", &format!("/api/v1/keys/{alice_id}"), Some(ADMIN_TOKEN), "").status, 404);
    let left = call(&replicas[1], "GET", "/api/v1/keys?user_id=alice", Some(ADMIN_TOKEN), "");
    assert_eq!(left.json()["keys"].as_array().map(Vec::len), Some(1), "{}", left.body);
    // Bob's key is untouched.
    assert!(matches!(call(&replicas[2], "POST", "/api/v1/task", Some(&bob), "{}").status, 200 | 202));
}

/// Authentication on without an admin token would leave the key and log routes open: the
/// configuration is refused, and requests get a 500 that says why.
#[test]
fn authentication_without_an_admin_token_is_a_configuration_error() {
    let redis = Redis::start();
    let host = Host::start(
        &redis,
        &HostOptions { variables: vec![("auth".to_string(), "api_key".to_string())], lossy_cas: false },
    );
    let reply = call(&host, "POST", "/api/v1/task", None, r#"{"user_id":"alice"}"#);
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(reply.body.contains("admin_token"), "{}", reply.body);
    let wrong = Host::start(
        &redis,
        &HostOptions { variables: vec![("auth".to_string(), "oauth".to_string())], lossy_cas: false },
    );
    let reply = call(&wrong, "POST", "/api/v1/task", None, r#"{"user_id":"alice"}"#);
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(reply.body.contains("none, jwt or api_key"), "{}", reply.body);
}

/// Under `auth = jwt` a worker key (an API key the admin made with `"worker": true`) claims and
/// reports its pulled kind; a user's JWT may not claim, and a user's API key is no credential.
#[test]
fn under_jwt_workers_use_worker_keys() {
    let redis = Redis::start();
    let policies = r#"{"kinds": {"render": {"windows": [], "pull": true}}}"#;
    let host = host(&redis, &[("auth", "jwt"), ("jwt_hs256_secret", SECRET), ("policies", policies)]);
    let make = |body: &str| {
        let reply = call(&host, "POST", "/api/v1/keys", Some(ADMIN_TOKEN), body);
        assert_eq!(reply.status, 201, "{body}: {}", reply.body);
        reply.json()["key"].as_str().unwrap_or_default().to_string()
    };
    let worker = make(r#"{"worker":true,"kinds":["render"]}"#);
    let user_key = make(r#"{"user_id":"ann"}"#);
    let ann = hs256(&json!({"sub": "ann", "exp": now() + 300}));
    let made = call(&host, "POST", "/api/v1/task", Some(&ann), r#"{"kind":"render"}"#);
    assert_eq!(made.status, 202, "{}", made.body);

    let claim = r#"{"kind":"render"}"#;
    assert_eq!(call(&host, "POST", "/api/v1/claims", Some(&ann), claim).status, 403);
    assert_unauthenticated(
        &call(&host, "POST", "/api/v1/claims", Some(&user_key), claim),
        &user_key,
        "accepted only as a worker key",
    );
    let got = call(&host, "POST", "/api/v1/claims", Some(&worker), claim);
    assert_eq!(got.json()["claims"][0]["task_id"], made.json()["task_id"], "{}", got.body);
    let outcome = format!(
        r#"{{"claim":"{}","result":"completed"}}"#,
        got.json()["claims"][0]["claim"].as_str().unwrap_or_default()
    );
    let path = format!("/api/v1/task/{}/outcome", made.json()["task_id"].as_str().unwrap_or_default());
    assert_eq!(call(&host, "POST", &path, Some(&worker), &outcome).status, 200);
    let read = call(
        &host,
        "GET",
        &format!("/api/v1/task/{}", made.json()["task_id"].as_str().unwrap_or_default()),
        Some(&ann),
        "",
    );
    assert_eq!(read.json()["status"], "completed", "{}", read.body);
}
