//! The OpenAPI document at `/api/v1/openapi.json` against the real answers: every response
//! the app gives to a wide set of requests (good, bad, unauthorised, over the backlog, with
//! Redis stopped) must be documented for its route, method, status and media type, and its
//! body and headers must validate against the document's schemas.

mod support;

use serde_json::Value;
use support::{Host, HostOptions, Redis, Reply, request};

const TOKEN: &str = "s3cret-token";

/// The document as the app serves it.
fn served_document(host: &Host) -> Value {
    let reply = host.get("/api/v1/openapi.json");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.1.0");
    doc
}

/// A JSON pointer token, escaped for use in a URI fragment.
fn token(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1").replace('{', "%7B").replace('}', "%7D")
}

/// Validates `instance` against the schema at `pointer` (a `#/...` fragment) in `doc`. The
/// document itself is the root schema, so its `#/components/...` references resolve; its
/// other keys (`paths`, `info`, ...) are keywords JSON Schema ignores.
fn validate(doc: &Value, pointer: &str, instance: &Value) -> Result<(), String> {
    let mut root = doc.clone();
    root["$ref"] = Value::String(pointer.to_string());
    let validator = jsonschema::validator_for(&root).map_err(|e| format!("schema at {pointer}: {e}"))?;
    let errors: Vec<String> = validator.iter_errors(instance).map(|e| format!("{e} at {}", e.instance_path())).collect();
    if errors.is_empty() { Ok(()) } else { Err(format!("{instance} against {pointer}: {}", errors.join("; "))) }
}

/// Checks one real answer against the document; returns what was checked, for the report.
fn check(doc: &Value, method: &str, route: &str, reply: &Reply) -> String {
    let method = method.to_lowercase();
    let status = reply.status.to_string();
    let operation = format!("#/paths/{}/{method}", token(route));
    let response = &doc["paths"][route][&method]["responses"][&status];
    assert!(response.is_object(), "{method} {route} answered {status}, which the document lacks:\n{}", reply.body);
    let content_type = reply.header("content-type").unwrap_or("").split(';').next().unwrap_or("").trim().to_string();
    let media = &response["content"][&content_type];
    assert!(media.is_object(), "{method} {route} {status}: media type {content_type:?} is not documented");
    let schema = format!("{operation}/responses/{status}/content/{}/schema", token(&content_type));
    if content_type == "application/x-ndjson" {
        let item = format!("{operation}/responses/{status}/content/{}/x-item-schema", token(&content_type));
        for line in reply.body.lines() {
            let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("NDJSON line {line:?}: {e}"));
            validate(doc, &item, &entry).unwrap_or_else(|e| panic!("{method} {route} {status}: {e}"));
        }
    } else if content_type.ends_with("json") {
        let body: Value = serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{method} {route} {status}: not JSON ({e})"));
        validate(doc, &schema, &body).unwrap_or_else(|e| panic!("{method} {route} {status}: {e}"));
    } else {
        validate(doc, &schema, &Value::String(reply.body.clone())).unwrap_or_else(|e| panic!("{method} {route} {status}: {e}"));
    }
    // Headers the document names are checked against their schemas when present, and the
    // ones the API promises (SPEC §2) must be present.
    let headers = response["headers"].as_object().cloned().unwrap_or_default();
    for (name, spec) in &headers {
        let pointer = match spec["$ref"].as_str() {
            Some(reference) => format!("{reference}/schema"),
            None => format!("{operation}/responses/{status}/headers/{}/schema", token(name)),
        };
        match reply.header(name) {
            Some(value) => validate(doc, &pointer, &Value::String(value.to_string()))
                .unwrap_or_else(|e| panic!("{method} {route} {status} header {name}: {e}")),
            None => assert!(
                !["Retry-After", "Location", "RateLimit", "RateLimit-Policy", "Allow"].contains(&name.as_str()),
                "{method} {route} {status} lacks header {name}"
            ),
        }
    }
    format!("{} {route} {status} {content_type}", method.to_uppercase())
}

fn post(host: &Host, headers: &[(&str, &str)], body: &str) -> Reply {
    request(&host.addr, "POST", "/api/v1/task", headers, body.as_bytes())
}

#[test]
fn every_answer_matches_the_openapi_document() {
    let redis = Redis::start();
    let host = Host::start(
        &redis,
        &HostOptions { variables: vec![("max_backlog".into(), "3".into())], ..HostOptions::default() },
    );
    let doc = served_document(&host);
    let json = [("Content-Type", "application/json")];
    let mut checked = Vec::new();
    let mut see = |method: &str, route: &str, reply: Reply| {
        checked.push(check(&doc, method, route, &reply));
        reply
    };

    // Admission: inline, queued, replayed, over the backlog, and every bad input.
    let first = see("POST", "/api/v1/task", post(&host, &json, r#"{"user_id":"oa"}"#));
    assert_eq!(first.status, 200);
    let keyed = [("Content-Type", "application/json"), ("Idempotency-Key", "k-1")];
    let queued = see("POST", "/api/v1/task", post(&host, &keyed, r#"{"user_id":"oa"}"#));
    assert_eq!(queued.status, 202);
    let replayed = see("POST", "/api/v1/task", post(&host, &keyed, r#"{"user_id":"oa"}"#));
    assert_eq!((replayed.status, replayed.header("idempotency-replayed")), (202, Some("true")));
    for _ in 0..2 {
        assert_eq!(see("POST", "/api/v1/task", post(&host, &json, r#"{"user_id":"oa"}"#)).status, 202);
    }
    assert_eq!(see("POST", "/api/v1/task", post(&host, &json, r#"{"user_id":"oa"}"#)).status, 429);
    let too_big = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(5_000));
    for (headers, body, status) in [
        (&json[..], "not json", 400),
        (&json[..], r#"{"user_id":""}"#, 400),
        (&json[..], r#"{"user_id":1.5}"#, 400),
        (&[("Content-Type", "application/json"), ("Idempotency-Key", "")][..], r#"{"user_id":"oa"}"#, 400),
        (&[("Content-Type", "text/plain")][..], r#"{"user_id":"oa"}"#, 415),
        (&json[..], too_big.as_str(), 413),
    ] {
        assert_eq!(see("POST", "/api/v1/task", post(&host, headers, body)).status, status, "{body:?}");
    }
    // A 405 is documented on the operation its Allow header names.
    assert_eq!(see("POST", "/api/v1/task", request(&host.addr, "PUT", "/api/v1/task", &[], b"")).status, 405);

    // Payloads and cancellation.
    let with_payload = r#"{"user_id":"ob","payload":{"job":"resize","sizes":[1,2.5]}}"#;
    let ran = see("POST", "/api/v1/task", post(&host, &json, with_payload));
    assert_eq!(ran.status, 200);
    let keyed = [("Content-Type", "application/json"), ("Idempotency-Key", "k-2")];
    let waiting = see("POST", "/api/v1/task", post(&host, &keyed, with_payload));
    assert_eq!(waiting.status, 202);
    let oversized = format!(r#"{{"user_id":"ob","payload":"{}"}}"#, "x".repeat(2_100));
    assert_eq!(see("POST", "/api/v1/task", post(&host, &json, &oversized)).status, 413);
    let route = "/api/v1/task/{task_id}";
    let path = |reply: &Reply| format!("/api/v1/task/{}", reply.json()["task_id"].as_str().unwrap_or_default());
    let delete = |path: &str| request(&host.addr, "DELETE", path, &[], b"");
    assert_eq!(see("DELETE", route, delete(&path(&waiting))).status, 200);
    assert_eq!(see("DELETE", route, delete(&path(&waiting))).status, 200);
    assert_eq!(see("GET", route, host.get(&path(&waiting))).status, 200);
    let replayed = see("POST", "/api/v1/task", post(&host, &keyed, with_payload));
    assert_eq!((replayed.status, replayed.json()["status"].as_str()), (200, Some("cancelled")));
    assert_eq!(see("DELETE", route, delete(&path(&ran))).status, 409);
    assert_eq!(see("DELETE", route, delete("/api/v1/task/000000000000000000000000")).status, 404);
    assert_eq!(see("DELETE", route, request(&host.addr, "PUT", &path(&ran), &[], b"")).status, 405);
    let with = see("GET", route, host.get(&path(&ran)));
    assert_eq!(with.json()["payload"]["job"], "resize", "{}", with.body);

    // One user's state.
    let users = "/api/v1/users/{user_id}";
    assert_eq!(see("GET", users, host.get("/api/v1/users/oa")).status, 200);
    assert_eq!(see("GET", users, host.get("/api/v1/users/nobody%20yet")).status, 200);
    assert_eq!(see("GET", users, host.get("/api/v1/users/%FF")).status, 400);
    assert_eq!(see("GET", users, request(&host.addr, "DELETE", "/api/v1/users/oa", &[], b"")).status, 405);

    // Reads.
    let task_id = queued.json()["task_id"].as_str().unwrap_or_default().to_string();
    let route = "/api/v1/task/{task_id}";
    assert_eq!(see("GET", route, host.get(&format!("/api/v1/task/{task_id}"))).status, 200);
    assert_eq!(see("GET", route, host.get("/api/v1/task/000000000000000000000000")).status, 404);
    assert_eq!(see("GET", "/api/v1/log", host.get("/api/v1/log")).status, 200);
    let ndjson = request(&host.addr, "GET", "/api/v1/log?limit=5", &[("Accept", "application/x-ndjson")], b"");
    assert_eq!(see("GET", "/api/v1/log", ndjson).status, 200);
    assert_eq!(see("GET", "/api/v1/log", host.get("/api/v1/log?limit=0")).status, 400);
    assert_eq!(see("GET", "/api/v1/overview", host.get("/api/v1/overview")).status, 200);
    let watched = see("GET", "/api/v1/overview", host.get("/api/v1/overview?user_id=oa"));
    assert_eq!(watched.json()["user"]["queued"].as_array().map(Vec::len), Some(3), "{}", watched.body);
    assert_eq!(see("GET", "/api/v1/overview", host.get("/api/v1/overview?user=oa")).status, 400);
    assert_eq!(see("GET", "/metrics", host.get("/metrics")).status, 200);
    assert_eq!(see("GET", "/healthz", host.get("/healthz")).status, 200);
    assert_eq!(see("GET", "/", host.get("/")).status, 200);
    assert_eq!(see("GET", "/api/v1/openapi.json", host.get("/api/v1/openapi.json")).status, 200);

    // Admin routes with a token configured.
    let guarded = Host::start(&redis, &HostOptions { variables: vec![("admin_token".into(), TOKEN.into())], ..HostOptions::default() });
    let bearer = format!("Bearer {TOKEN}");
    for (route, path) in [("/api/v1/log", "/api/v1/log"), ("/api/v1/overview", "/api/v1/overview"), ("/metrics", "/metrics"), ("/api/v1/users/{user_id}", "/api/v1/users/oa")] {
        assert_eq!(see("GET", route, guarded.get(path)).status, 401);
        let wrong = request(&guarded.addr, "GET", path, &[("Authorization", "Bearer nope")], b"");
        assert_eq!(see("GET", route, wrong).status, 401);
        let allowed = request(&guarded.addr, "GET", path, &[("Authorization", &bearer)], b"");
        assert_eq!(see("GET", route, allowed).status, 200);
    }

    // Redis stopped (not answering): 503 problems with Retry-After.
    redis.signal("-STOP");
    let unavailable = see("POST", "/api/v1/task", post(&host, &json, r#"{"user_id":"oa2"}"#));
    let health = see("GET", "/healthz", host.get("/healthz"));
    redis.signal("-CONT");
    assert_eq!((unavailable.status, health.status), (503, 503));

    // Every documented operation was exercised.
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    for (route, operations) in paths {
        for method in operations.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            let prefix = format!("{} {route} ", method.to_uppercase());
            assert!(checked.iter().any(|c| c.starts_with(&prefix)), "no request exercised {prefix}");
        }
    }
    eprintln!("checked {} answers against the document:\n{}", checked.len(), checked.join("\n"));
}
