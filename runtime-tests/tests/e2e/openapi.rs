//! The OpenAPI document at `/api/v1/openapi.json` against the real answers: every response
//! the app gives to a wide set of requests (good, bad, unauthorised, over the backlog, with
//! kinds, costs and tiers configured, with Redis stopped) must be documented for its route,
//! method, status and media type, and its body and headers must validate against the
//! document's schemas.

use crate::support;

use serde_json::{Value, json};
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
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|e| format!("{e} at {}", e.instance_path())).collect();
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
        let body: Value =
            serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{method} {route} {status}: not JSON ({e})"));
        validate(doc, &schema, &body).unwrap_or_else(|e| panic!("{method} {route} {status}: {e}"));
    } else {
        validate(doc, &schema, &Value::String(reply.body.clone()))
            .unwrap_or_else(|e| panic!("{method} {route} {status}: {e}"));
    }
    // Headers the document names are checked against their schemas when present, and the
    // ones the API promises must be present.
    let headers = response["headers"].as_object().cloned().unwrap_or_default();
    for (name, spec) in &headers {
        let (pointer, schema) = match spec["$ref"].as_str() {
            Some(reference) => {
                let header = doc
                    .pointer(reference.trim_start_matches('#'))
                    .unwrap_or_else(|| panic!("{reference} is not in the document"));
                (format!("{reference}/schema"), header["schema"].clone())
            }
            None => (format!("{operation}/responses/{status}/headers/{}/schema", token(name)), spec["schema"].clone()),
        };
        match reply.header(name) {
            Some(value) => validate(doc, &pointer, &header_instance(&schema, value))
                .unwrap_or_else(|e| panic!("{method} {route} {status} header {name}: {e}")),
            None => assert!(
                !["Retry-After", "Location", "RateLimit", "RateLimit-Policy", "Allow"].contains(&name.as_str()),
                "{method} {route} {status} lacks header {name}"
            ),
        }
    }
    format!("{} {route} {status} {content_type}", method.to_uppercase())
}

/// A header's value as the instance its schema describes: the text itself, or for an
/// integer schema the number it spells (OpenAPI's `simple` style); text that spells no
/// integer stays text, so that the schema rejects it.
fn header_instance(schema: &Value, value: &str) -> Value {
    match (schema["type"].as_str(), value.parse::<i64>()) {
        (Some("integer"), Ok(number)) => Value::from(number),
        _ => Value::String(value.to_string()),
    }
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
    // Kinds, costs and tiers: a host with a `policies` variable, on keys of its own. Every
    // answer below is checked against its document: the other hosts' kinds and tiers are a
    // subset of its own, and `check` looks at answers, not at who may ask.
    let policies = r#"{"kinds": {"default": ["1/1s", "20/60s"], "email": ["5/60s"],
        "render": {"windows": ["1/1s"], "pull": true, "attempts": 2}},
        "tiers": {"pro": {"default": ["5/30s", "100/60s"], "email": ["50/60s"]}}}"#;
    let kinds = Host::start(
        &redis,
        &HostOptions {
            variables: vec![("policies".into(), policies.into()), ("key_prefix".into(), "oa-kinds:".into())],
            ..HostOptions::default()
        },
    );
    let doc = served_document(&kinds);
    assert_eq!(served_document(&host)["components"]["schemas"]["Kind"]["enum"], json!(["default"]));
    // Without a pulled kind the workers' routes are left out of the document.
    assert!(served_document(&host)["paths"].get("/api/v1/claims").is_none());
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
    let guarded = Host::start(
        &redis,
        &HostOptions {
            variables: vec![("admin_token".into(), TOKEN.into()), ("x_ratelimit_headers".into(), "off".into())],
            ..HostOptions::default()
        },
    );
    let bearer = format!("Bearer {TOKEN}");
    for (route, path) in [
        ("/api/v1/log", "/api/v1/log"),
        ("/api/v1/overview", "/api/v1/overview"),
        ("/metrics", "/metrics"),
        ("/api/v1/users/{user_id}", "/api/v1/users/oa"),
    ] {
        assert_eq!(see("GET", route, guarded.get(path)).status, 401);
        let wrong = request(&guarded.addr, "GET", path, &[("Authorization", "Bearer nope")], b"");
        assert_eq!(see("GET", route, wrong).status, 401);
        let allowed = request(&guarded.addr, "GET", path, &[("Authorization", &bearer)], b"");
        assert_eq!(see("GET", route, allowed).status, 200);
    }

    // A PUT of a tier takes the admin token too.
    let tier_route = "/api/v1/users/{user_id}/tier";
    let put = |addr: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        request(addr, "PUT", path, headers, body.as_bytes())
    };
    assert_eq!(
        see("PUT", tier_route, put(&guarded.addr, "/api/v1/users/oa/tier", &json, r#"{"tier":null}"#)).status,
        401
    );
    let authorized = [("Content-Type", "application/json"), ("Authorization", bearer.as_str())];
    let cleared = see("PUT", tier_route, put(&guarded.addr, "/api/v1/users/oa/tier", &authorized, r#"{"tier":null}"#));
    assert_eq!((cleared.status, cleared.json()["tier"].clone()), (200, Value::Null), "{}", cleared.body);
    // With x_ratelimit_headers=off only the IETF fields are sent.
    let plain = see("POST", "/api/v1/task", post(&guarded, &json, r#"{"user_id":"oq"}"#));
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert!(plain.header("ratelimit").is_some() && plain.header("x-ratelimit-limit").is_none(), "{:?}", plain.headers);

    // Kinds, costs and tiers, on the `kinds` host.
    // The bodies sent are what the document's request schema allows.
    let sent = |body: &str| {
        let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
        validate(&doc, "#/components/schemas/TaskRequest", &body).unwrap_or_else(|e| panic!("request body: {e}"));
        body.to_string()
    };
    let x_limits = |reply: &Reply| {
        let field = |name: &str| reply.header(name).and_then(|v| v.parse::<i64>().ok());
        (field("x-ratelimit-limit"), field("x-ratelimit-remaining"))
    };
    let emailed =
        see("POST", "/api/v1/task", post(&kinds, &json, &sent(r#"{"user_id":"ka","kind":"email","cost":2}"#)));
    assert_eq!(emailed.status, 200, "{}", emailed.body);
    assert_eq!(
        (emailed.json()["kind"].as_str(), emailed.json()["cost"].as_i64()),
        (Some("email"), Some(2)),
        "{}",
        emailed.body
    );
    assert_eq!(emailed.header("ratelimit-policy"), Some(r#""60s";q=5;w=60"#));
    assert_eq!(x_limits(&emailed), (Some(5), Some(3)), "{:?}", emailed.headers);
    let filled = see("POST", "/api/v1/task", post(&kinds, &json, &sent(r#"{"user_id":"ka","kind":"email","cost":3}"#)));
    assert_eq!((filled.status, x_limits(&filled)), (200, (Some(5), Some(0))), "{}", filled.body);
    let email_key = [("Content-Type", "application/json"), ("Idempotency-Key", "k-email")];
    let one = sent(r#"{"user_id":"ka","kind":"email","cost":1}"#);
    let waiting_email = see("POST", "/api/v1/task", post(&kinds, &email_key, &one));
    assert_eq!(waiting_email.status, 202, "{}", waiting_email.body);
    assert_eq!(
        (waiting_email.json()["kind"].as_str(), waiting_email.json()["cost"].as_i64()),
        (Some("email"), Some(1))
    );
    let costly = see("POST", "/api/v1/task", post(&kinds, &json, &sent(r#"{"user_id":"ka","kind":"email","cost":6}"#)));
    assert_eq!(costly.status, 422, "{}", costly.body);
    assert_eq!(costly.json()["type"], "urn:task-api:problem:cost-over-quota", "{}", costly.body);
    // Bad kinds and costs are 400s, and the document refuses them too (its kinds are the host's).
    for body in [
        r#"{"user_id":"ka","kind":"sms"}"#,
        r#"{"user_id":"ka","kind":7}"#,
        r#"{"user_id":"ka","kind":"a b"}"#,
        r#"{"user_id":"ka","cost":0}"#,
        r#"{"user_id":"ka","cost":1001}"#,
        r#"{"user_id":"ka","cost":1.5}"#,
        r#"{"user_id":"ka","cost":"2"}"#,
    ] {
        let reply = see("POST", "/api/v1/task", post(&kinds, &json, body));
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        let parsed: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
        let verdict = validate(&doc, "#/components/schemas/TaskRequest", &parsed);
        assert!(verdict.is_err(), "{body} is valid by TaskRequest");
    }

    // Workers that pull: claims (none due, one due, bad ones) and outcomes (each answer).
    let claim = |body: &str| request(&kinds.addr, "POST", "/api/v1/claims", &json, body.as_bytes());
    let valid = |schema: &str, body: &str| {
        let parsed: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
        validate(&doc, &format!("#/components/schemas/{schema}"), &parsed)
    };
    let none = see("POST", "/api/v1/claims", claim(r#"{"kind":"render","wait":"50ms"}"#));
    assert_eq!((none.status, none.json()["claims"].as_array().map(Vec::len)), (200, Some(0)), "{}", none.body);
    for body in [r#"{"user_id":"kr","kind":"render","payload":{"n":1}}"#, r#"{"user_id":"ks","kind":"render"}"#] {
        assert_eq!(see("POST", "/api/v1/task", post(&kinds, &json, body)).status, 202, "{body}");
    }
    let got = see("POST", "/api/v1/claims", claim(r#"{"kind":"render","max":5}"#));
    let claims = got.json()["claims"].as_array().cloned().unwrap_or_default();
    assert_eq!((got.status, claims.len()), (200, 2), "{}", got.body);
    for (body, status) in [
        (r#"{"kind":"email"}"#, 400),
        (r#"{"kind":"render","max":0}"#, 400),
        (r#"{"kind":"render","wait":"31s"}"#, 400),
        (r#"{"kind":"render","extra":1}"#, 400),
        ("[]", 400),
    ] {
        assert_eq!(see("POST", "/api/v1/claims", claim(body)).status, status, "{body}");
        assert!(valid("ClaimRequest", body).is_err(), "{body} is valid by ClaimRequest");
    }
    let outcome_route = "/api/v1/task/{task_id}/outcome";
    let report = |claim: &Value, body: &str| {
        let path = format!("/api/v1/task/{}/outcome", claim["task_id"].as_str().unwrap_or_default());
        valid("OutcomeRequest", body).unwrap_or_else(|e| panic!("request body: {e}"));
        request(&kinds.addr, "POST", &path, &json, body.as_bytes())
    };
    let token = |claim: &Value| claim["claim"].as_str().unwrap_or_default().to_string();
    let done = format!(r#"{{"claim":"{}","result":"completed","detail":{{"frames":3}}}}"#, token(&claims[0]));
    assert_eq!(see("POST", outcome_route, report(&claims[0], &done)).status, 200);
    assert_eq!(see("POST", outcome_route, report(&claims[0], &done)).status, 409);
    let again = format!(r#"{{"claim":"{}","result":"retry","retry_after":"2s"}}"#, token(&claims[1]));
    let queued = see("POST", outcome_route, report(&claims[1], &again));
    assert_eq!((queued.status, queued.json()["status"].as_str()), (200, Some("queued")), "{}", queued.body);
    let nobody = r#"{"claim":"x","result":"failed"}"#;
    let unknown =
        request(&kinds.addr, "POST", "/api/v1/task/000000000000000000000000/outcome", &json, nobody.as_bytes());
    assert_eq!(see("POST", outcome_route, unknown).status, 404);
    assert_eq!(see("POST", outcome_route, report(&claims[1], r#"{"claim":"x","result":"failed"}"#)).status, 409);
    let malformed = request(&kinds.addr, "POST", "/api/v1/task/000000000000000000000000/outcome", &json, b"{}");
    assert_eq!(see("POST", outcome_route, malformed).status, 400);
    let get = request(&kinds.addr, "GET", "/api/v1/task/000000000000000000000000/outcome", &[], b"");
    assert_eq!(see("POST", outcome_route, get).status, 405);
    let read = see(
        "GET",
        "/api/v1/task/{task_id}",
        kinds.get(&format!("/api/v1/task/{}", claims[0]["task_id"].as_str().unwrap_or_default())),
    );
    assert_eq!(read.json()["detail"], json!({"frames": 3}), "{}", read.body);
    assert_eq!(see("GET", "/api/v1/overview", kinds.get("/api/v1/overview")).status, 200);

    // Tiers: set, refused, cleared.
    let tier_path = "/api/v1/users/ka/tier";
    let sent_tier = |body: &str| {
        let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
        validate(&doc, "#/components/schemas/TierRequest", &body).unwrap_or_else(|e| panic!("request body: {e}"));
        body.to_string()
    };
    let pro = see("PUT", tier_route, put(&kinds.addr, tier_path, &json, &sent_tier(r#"{"tier":"pro"}"#)));
    assert_eq!(
        (pro.status, pro.json()["user_id"].as_str(), pro.json()["tier"].as_str()),
        (200, Some("ka"), Some("pro")),
        "{}",
        pro.body
    );
    for (headers, path, body, status, schema_refuses) in [
        (&json[..], tier_path, r#"{"tier":"gold"}"#, 400, true),
        (&json[..], tier_path, r#"{"tier":5}"#, 400, true),
        (&json[..], tier_path, r#"{"tier":null,"extra":1}"#, 400, true),
        (&json[..], tier_path, r#"{}"#, 400, true),
        (&json[..], tier_path, r#"["pro"]"#, 400, true),
        (&json[..], tier_path, "not json", 400, true),
        (&json[..], "/api/v1/users/%FF/tier", r#"{"tier":"pro"}"#, 400, false),
        (&[("Content-Type", "text/plain")][..], tier_path, r#"{"tier":"pro"}"#, 415, false),
    ] {
        let reply = see("PUT", tier_route, put(&kinds.addr, path, headers, body));
        assert_eq!(reply.status, status, "{path} {body}: {}", reply.body);
        if let Ok(parsed) = serde_json::from_str::<Value>(body) {
            let verdict = validate(&doc, "#/components/schemas/TierRequest", &parsed);
            assert_eq!(verdict.is_err(), schema_refuses, "{body} against TierRequest: {verdict:?}");
        }
    }
    for method in ["GET", "DELETE", "POST"] {
        let reply = see("PUT", tier_route, request(&kinds.addr, method, tier_path, &[], b""));
        assert_eq!((reply.status, reply.header("allow")), (405, Some("PUT")), "{method}: {}", reply.body);
    }
    // Under the tier, the email lane admits 50 units a minute, after the task already queued;
    // the tier's default kind admits at most 5 units per 30 s (so the next one waits long
    // enough to be seen queued below).
    let big = see("POST", "/api/v1/task", post(&kinds, &json, &sent(r#"{"user_id":"ka","kind":"email","cost":6}"#)));
    assert_eq!((big.status, big.json()["cost"].as_i64()), (202, Some(6)), "{}", big.body);
    assert_eq!(big.header("ratelimit-policy"), Some(r#""60s";q=50;w=60"#));
    let over_tier =
        see("POST", "/api/v1/task", post(&kinds, &json, &sent(r#"{"user_id":"ka","cost":6,"payload":[1]}"#)));
    assert_eq!(over_tier.status, 422, "{}", over_tier.body);
    assert!(over_tier.json()["detail"].as_str().is_some_and(|d| d.contains("\"pro\"")), "{}", over_tier.body);
    let ran_default = see(
        "POST",
        "/api/v1/task",
        post(&kinds, &json, &sent(r#"{"user_id":"ka","kind":null,"cost":5,"payload":{"n":1}}"#)),
    );
    assert_eq!(
        (ran_default.status, ran_default.json()["kind"].as_str()),
        (200, Some("default")),
        "{}",
        ran_default.body
    );
    assert_eq!(ran_default.header("ratelimit-policy"), Some(r#""30s";q=5;w=30, "60s";q=100;w=60"#));
    let queued_default = see("POST", "/api/v1/task", post(&kinds, &json, &sent(r#"{"user_id":"ka"}"#)));
    assert_eq!(queued_default.status, 202, "{}", queued_default.body);

    // The user's state, under the tier and after it is cleared.
    let state = see("GET", users, kinds.get("/api/v1/users/ka"));
    let body = state.json();
    assert_eq!((state.status, body["tier"].as_str()), (200, Some("pro")), "{}", state.body);
    assert_eq!(body["kinds"]["email"]["queued"], 2, "{}", state.body);
    assert_eq!(body["kinds"]["email"]["remaining"][0]["q"], 50, "{}", state.body);
    assert_eq!(
        (body["queued"].clone(), body["kinds"]["default"]["queued"].clone()),
        (1.into(), 1.into()),
        "{}",
        state.body
    );
    // The overview watching the user under the tier: their tier, each lane's windows for it,
    // and each completion's units (the email lane ran 2 then 3 units, the default lane 5).
    let tiered = see("GET", "/api/v1/overview", kinds.get("/api/v1/overview?user_id=ka"));
    let body = tiered.json();
    let user = &body["user"];
    assert_eq!((tiered.status, user["tier"].as_str()), (200, Some("pro")), "{}", tiered.body);
    assert_eq!(
        user["lanes"]["email"]["windows"],
        serde_json::json!([{"name": "60s", "q": 50, "w": 60}]),
        "{}",
        tiered.body
    );
    let pro_default = serde_json::json!([{"name": "30s", "q": 5, "w": 30}, {"name": "60s", "q": 100, "w": 60}]);
    assert_eq!(user["lanes"]["default"]["windows"], pro_default, "{}", tiered.body);
    assert_eq!(body["kinds"]["email"], serde_json::json!([{"name": "60s", "q": 5, "w": 60}]), "{}", tiered.body);
    assert_eq!(user["lanes"]["email"]["completed_units"], serde_json::json!([2, 3]), "{}", tiered.body);
    assert_eq!(user["lanes"]["default"]["completed_units"], serde_json::json!([5]), "{}", tiered.body);
    for kind in ["default", "email"] {
        let lane = &user["lanes"][kind];
        let count = |field: &str| lane[field].as_array().map(Vec::len);
        assert_eq!(count("completed"), count("completed_units"), "lane {kind}: {}", tiered.body);
    }
    let built_in = see("PUT", tier_route, put(&kinds.addr, tier_path, &json, &sent_tier(r#"{"tier":null}"#)));
    assert_eq!((built_in.status, built_in.json()["tier"].clone()), (200, Value::Null), "{}", built_in.body);
    let state = see("GET", users, kinds.get("/api/v1/users/ka"));
    assert_eq!(state.json()["tier"], Value::Null, "{}", state.body);
    assert_eq!(state.json()["kinds"]["email"]["remaining"][0]["policy"], "60s", "{}", state.body);
    assert_eq!(state.json()["kinds"]["email"]["remaining"][0]["q"], 5, "{}", state.body);
    assert_eq!(see("GET", users, kinds.get("/api/v1/users/nobody")).status, 200);

    // The overview with the user watched: the kinds' windows and every lane.
    let watched = see("GET", "/api/v1/overview", kinds.get("/api/v1/overview?user_id=ka"));
    let body = watched.json();
    assert_eq!(watched.status, 200);
    assert_eq!(body["kinds"]["email"], serde_json::json!([{"name": "60s", "q": 5, "w": 60}]), "{}", watched.body);
    let costs =
        |lane: &Value| lane["queued"].as_array().map(|q| q.iter().map(|t| t["cost"].as_i64()).collect::<Vec<_>>());
    assert_eq!(costs(&body["user"]["lanes"]["email"]), Some(vec![Some(1), Some(6)]), "{}", watched.body);
    assert_eq!(costs(&body["user"]), Some(vec![Some(1)]), "{}", watched.body);
    assert_eq!(body["user"]["lanes"]["email"]["completed"].as_array().map(Vec::len), Some(2), "{}", watched.body);
    // Back on the built-in tier: no tier, and the lanes' windows are the top-level ones.
    assert_eq!(body["user"]["tier"], Value::Null, "{}", watched.body);
    assert_eq!(body["user"]["lanes"]["email"]["windows"], body["kinds"]["email"], "{}", watched.body);
    assert_eq!(body["user"]["lanes"]["default"]["windows"], body["kinds"]["default"], "{}", watched.body);
    assert_eq!(body["user"]["lanes"]["email"]["completed_units"], serde_json::json!([2, 3]), "{}", watched.body);
    let due = body["next_due"].as_array().cloned().unwrap_or_default();
    assert!(due.iter().any(|d| d["user_id"] == "ka" && d["kind"] == "email"), "{}", watched.body);
    let recent = body["recent"].as_array().cloned().unwrap_or_default();
    assert!(recent.iter().any(|r| r["kind"] == "email" && r["cost"] == 3), "{}", watched.body);
    assert_eq!(see("GET", "/api/v1/overview", kinds.get("/api/v1/overview")).json()["user"], Value::Null);

    // The NDJSON log names each task's kind, cost and the windows it was admitted under.
    let log = see(
        "GET",
        "/api/v1/log",
        request(&kinds.addr, "GET", "/api/v1/log", &[("Accept", "application/x-ndjson")], b""),
    );
    let entries: Vec<Value> =
        log.body.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect();
    let entry = |cost: i64| {
        entries.iter().find(|e| e["cost"] == cost).unwrap_or_else(|| panic!("no entry of cost {cost}: {}", log.body))
    };
    assert_eq!(
        (entry(2)["kind"].as_str(), entry(2)["policy"].as_str()),
        (Some("email"), Some("5/60000")),
        "{}",
        log.body
    );
    assert_eq!(
        (entry(5)["kind"].as_str(), entry(5)["policy"].as_str()),
        (Some("default"), Some("5/30000,100/60000")),
        "{}",
        log.body
    );
    assert_eq!(entry(5)["payload"], serde_json::json!({"n": 1}), "{}", log.body);

    // One task, read, cancelled and replayed, keeps its kind and cost.
    let email_path = path(&waiting_email);
    let read = see("GET", route, kinds.get(&email_path));
    assert_eq!(
        (read.json()["kind"].as_str(), read.json()["cost"].as_i64(), read.json()["status"].as_str()),
        (Some("email"), Some(1), Some("queued"))
    );
    let cancelled = see("DELETE", route, request(&kinds.addr, "DELETE", &email_path, &[], b""));
    assert_eq!((cancelled.status, cancelled.json()["kind"].as_str()), (200, Some("email")), "{}", cancelled.body);
    let replayed = see("POST", "/api/v1/task", post(&kinds, &email_key, &one));
    assert_eq!(
        (replayed.status, replayed.json()["status"].as_str(), replayed.json()["cost"].as_i64()),
        (200, Some("cancelled"), Some(1)),
        "{}",
        replayed.body
    );
    let read = see("GET", route, kinds.get(&path(&big)));
    assert_eq!((read.json()["kind"].as_str(), read.json()["cost"].as_i64()), (Some("email"), Some(6)), "{}", read.body);

    // An Idempotency-Key reused for another request: 422. (The key "oa" used above: keys are
    // per user. With another user's key this was a new task, answered 422 for its cost, or
    // 429 while oa's backlog was still full: under the real Spin, which got here faster.)
    let oa_key = [("Content-Type", "application/json"), ("Idempotency-Key", "k-1")];
    let reused = see("POST", "/api/v1/task", post(&host, &oa_key, r#"{"user_id":"oa","cost":2}"#));
    assert_eq!(
        (reused.status, reused.json()["type"].as_str()),
        (422, Some("urn:task-api:problem:idempotency-key-reused")),
        "{}",
        reused.body
    );

    // `auth = api_key`: keys made, listed and revoked; 401 without or with bad credentials,
    // 403 for another user, 404 for another user's task.
    let keyed_host = Host::start(
        &redis,
        &HostOptions {
            variables: vec![("auth".into(), "api_key".into()), ("admin_token".into(), TOKEN.into())],
            ..HostOptions::default()
        },
    );
    let admin = format!("Bearer {TOKEN}");
    let as_admin = [("Content-Type", "application/json"), ("Authorization", admin.as_str())];
    let keys_route = "/api/v1/keys";
    let make = |user: &str| {
        request(&keyed_host.addr, "POST", keys_route, &as_admin, format!(r#"{{"user_id":"{user}"}}"#).as_bytes())
    };
    let made = see("POST", keys_route, make("ka"));
    assert_eq!(made.status, 201, "{}", made.body);
    let other = make("kb").json();
    let (key_id, key) = (
        made.json()["key_id"].as_str().unwrap_or_default().to_string(),
        made.json()["key"].as_str().unwrap_or_default().to_string(),
    );
    let other_key = format!("Bearer {}", other["key"].as_str().unwrap_or_default());
    assert_eq!(see("POST", keys_route, request(&keyed_host.addr, "POST", keys_route, &as_admin, b"[]")).status, 400);
    assert_eq!(
        see("POST", keys_route, request(&keyed_host.addr, "POST", keys_route, &json, br#"{"user_id":"ka"}"#)).status,
        401
    );
    assert_eq!(
        see("GET", keys_route, request(&keyed_host.addr, "GET", "/api/v1/keys?user_id=ka", &as_admin, b"")).status,
        200
    );
    assert_eq!(see("GET", keys_route, request(&keyed_host.addr, "GET", keys_route, &as_admin, b"")).status, 400);
    let bearer = format!("Bearer {key}");
    let as_ka = [("Content-Type", "application/json"), ("Authorization", bearer.as_str())];
    let as_kb = [("Content-Type", "application/json"), ("Authorization", other_key.as_str())];
    let mine = see("POST", "/api/v1/task", post(&keyed_host, &as_ka, "{}"));
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(see("POST", "/api/v1/task", post(&keyed_host, &as_ka, r#"{"user_id":"kb"}"#)).status, 403);
    assert_eq!(see("POST", "/api/v1/task", post(&keyed_host, &json, r#"{"user_id":"ka"}"#)).status, 401);
    let bad_key = [("Authorization", "Bearer tk_nope")];
    assert_eq!(see("POST", "/api/v1/task", post(&keyed_host, &bad_key, "{}")).status, 401);
    let task_path = format!("/api/v1/task/{}", mine.json()["task_id"].as_str().unwrap_or_default());
    let task_route = "/api/v1/task/{task_id}";
    assert_eq!(see("GET", task_route, request(&keyed_host.addr, "GET", &task_path, &as_ka, b"")).status, 200);
    assert_eq!(see("GET", task_route, request(&keyed_host.addr, "GET", &task_path, &as_kb, b"")).status, 404);
    assert_eq!(see("GET", task_route, request(&keyed_host.addr, "GET", &task_path, &[], b"")).status, 401);
    assert_eq!(see("DELETE", task_route, request(&keyed_host.addr, "DELETE", &task_path, &[], b"")).status, 401);
    let user_route = "/api/v1/users/{user_id}";
    assert_eq!(see("GET", user_route, request(&keyed_host.addr, "GET", "/api/v1/users/ka", &as_ka, b"")).status, 200);
    assert_eq!(see("GET", user_route, request(&keyed_host.addr, "GET", "/api/v1/users/ka", &as_kb, b"")).status, 403);
    assert_eq!(see("GET", user_route, request(&keyed_host.addr, "GET", "/api/v1/users/ka", &[], b"")).status, 401);
    let revoke_route = "/api/v1/keys/{key_id}";
    let revoke_path = format!("/api/v1/keys/{key_id}");
    assert_eq!(
        see("DELETE", revoke_route, request(&keyed_host.addr, "DELETE", &revoke_path, &as_admin, b"")).status,
        200
    );
    assert_eq!(
        see("DELETE", revoke_route, request(&keyed_host.addr, "DELETE", &revoke_path, &as_admin, b"")).status,
        404
    );
    assert_eq!(see("DELETE", revoke_route, request(&keyed_host.addr, "DELETE", &revoke_path, &[], b"")).status, 401);
    assert_eq!(see("POST", "/api/v1/task", post(&keyed_host, &as_ka, "{}")).status, 401);

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

/// The security requirements of an operation (`null` when it has none).
fn security(doc: &Value, path: &str, method: &str) -> Value {
    doc["paths"][path][method].get("security").cloned().unwrap_or(Value::Null)
}

/// The security schemes a document defines, by name.
fn schemes(doc: &Value) -> Vec<String> {
    doc["components"]["securitySchemes"].as_object().map(|s| s.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn the_served_document_is_the_deployments() {
    let redis = Redis::start();
    let policies =
        r#"{"kinds": {"email": ["5/60s"], "report": ["1/10s"]}, "tiers": {"pro": {"email": ["50/60s"]}, "team": {}}}"#;
    let open = Host::start(
        &redis,
        &HostOptions { variables: vec![("policies".into(), policies.into())], ..HostOptions::default() },
    );
    let keyed = Host::start(
        &redis,
        &HostOptions {
            variables: vec![("auth".into(), "api_key".into()), ("admin_token".into(), TOKEN.into())],
            ..HostOptions::default()
        },
    );

    // `auth = none` without an admin token: no scheme, no requirement, and a task names its user.
    let doc = served_document(&open);
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["Kind"]["enum"], json!(["default", "email", "report"]));
    assert_eq!(schemas["Tier"]["enum"], json!(["pro", "team"]));
    assert_eq!(schemas["TaskRequest"]["required"], json!(["user_id"]));
    assert!(schemes(&doc).is_empty(), "{:?}", schemes(&doc));
    for (path, method) in [("/api/v1/task", "post"), ("/api/v1/users/{user_id}", "get"), ("/api/v1/log", "get")] {
        assert_eq!(security(&doc, path, method), Value::Null, "{method} {path}");
    }
    // What the document says is what the host does: a kind or tier outside the enums is refused.
    let json = [("Content-Type", "application/json")];
    assert_eq!(post(&open, &json, r#"{"user_id":"d1","kind":"report"}"#).status, 200);
    assert_eq!(post(&open, &json, r#"{"user_id":"d1","kind":"sms"}"#).status, 400);
    let tier = |name: &str| format!(r#"{{"tier":"{name}"}}"#);
    assert_eq!(request(&open.addr, "PUT", "/api/v1/users/d1/tier", &json, tier("team").as_bytes()).status, 200);
    assert_eq!(request(&open.addr, "PUT", "/api/v1/users/d1/tier", &json, tier("gold").as_bytes()).status, 400);

    // `auth = api_key` with the admin token: the key scheme on the user routes, beside the admin's.
    let doc = served_document(&keyed);
    assert_eq!(schemes(&doc), ["adminToken", "apiKey"]);
    assert_eq!(doc["components"]["schemas"]["Kind"]["enum"], json!(["default"]));
    assert_eq!(doc["components"]["schemas"]["Tier"]["enum"], json!([]));
    assert!(doc["components"]["schemas"]["TaskRequest"].get("required").is_none());
    let user_or_admin = json!([{"apiKey": []}, {"adminToken": []}]);
    for (path, method) in [
        ("/api/v1/task", "post"),
        ("/api/v1/task/{task_id}", "get"),
        ("/api/v1/task/{task_id}", "delete"),
        ("/api/v1/users/{user_id}", "get"),
    ] {
        assert_eq!(security(&doc, path, method), user_or_admin, "{method} {path}");
    }
    for (path, method) in [
        ("/api/v1/users/{user_id}/tier", "put"),
        ("/api/v1/keys", "post"),
        ("/api/v1/keys", "get"),
        ("/api/v1/keys/{key_id}", "delete"),
        ("/api/v1/log", "get"),
        ("/api/v1/overview", "get"),
        ("/metrics", "get"),
    ] {
        assert_eq!(security(&doc, path, method), json!([{"adminToken": []}]), "{method} {path}");
        // Required indeed: without the token, 401.
        let concrete = path.replace("{user_id}", "u").replace("{key_id}", "0123456789abcdef");
        let body: &[u8] = if ["put", "post"].contains(&method) { b"{}" } else { b"" };
        let reply = request(&keyed.addr, &method.to_uppercase(), &concrete, &json, body);
        assert_eq!(reply.status, 401, "{method} {concrete}: {}", reply.body);
    }
    for path in ["/healthz", "/", "/api/v1/openapi.json"] {
        assert_eq!(security(&doc, path, "get"), Value::Null, "{path}");
    }
    assert_eq!(post(&keyed, &json, r#"{"user_id":"d1"}"#).status, 401);
}
