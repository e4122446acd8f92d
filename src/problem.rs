//! RFC 9457 problem responses (`application/problem+json`), one constructor per case of
//! SPEC §2, so that every 4xx/5xx says what is wrong in the same shape.

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

pub type HttpResponse = Response<String>;

fn problem(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> HttpResponse {
    let body = json!({
        "type": format!("urn:task-api:problem:{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    let mut response = Response::new(body.to_string());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

fn with_header(mut response: HttpResponse, name: header::HeaderName, value: &str) -> HttpResponse {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
    response
}

pub fn bad_request(detail: impl Into<String>) -> HttpResponse {
    problem(StatusCode::BAD_REQUEST, "invalid-request", "The request is not valid", detail)
}

pub fn not_found(detail: impl Into<String>) -> HttpResponse {
    problem(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
}

pub fn method_not_allowed(allow: &str) -> HttpResponse {
    let response = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("this resource allows {allow}"),
    );
    with_header(response, header::ALLOW, allow)
}

pub fn too_large(limit: usize) -> HttpResponse {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "Request body too large",
        format!("the body must be at most {limit} bytes"),
    )
}

pub fn payload_too_large(size: usize, limit: usize) -> HttpResponse {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "Task payload too large",
        format!("the payload is {size} bytes of JSON; it must be at most {limit}"),
    )
}

/// A task that can no longer be cancelled because it already ran.
pub fn already_completed(task_id: &str, completed_at: i64) -> HttpResponse {
    problem(
        StatusCode::CONFLICT,
        "task-completed",
        "The task already ran",
        format!("task {task_id} completed at {completed_at} (epoch ms); only a queued task can be cancelled"),
    )
}

pub fn request_timeout(seconds: u64) -> HttpResponse {
    problem(
        StatusCode::REQUEST_TIMEOUT,
        "request-timeout",
        "Request body too slow",
        format!("the body did not arrive within {seconds} s"),
    )
}

pub fn unsupported_media_type(got: &str) -> HttpResponse {
    problem(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "Unsupported media type",
        format!("send application/json, not {got:?}"),
    )
}

pub fn unauthorized() -> HttpResponse {
    let response = problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Admin token required",
        "send Authorization: Bearer <admin_token>",
    );
    with_header(response, header::WWW_AUTHENTICATE, "Bearer")
}

/// Missing or bad credentials (`auth` on). `error` is RFC 6750 §3.1's code (`""` when no
/// credentials came, which §3.1 says to answer without one); `detail` never repeats them.
pub fn unauthenticated(error: &str, detail: impl Into<String>) -> HttpResponse {
    let response = problem(StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required", detail);
    let challenge = if error.is_empty() { "Bearer".to_string() } else { format!("Bearer error=\"{error}\"") };
    with_header(response, header::WWW_AUTHENTICATE, &challenge)
}

/// A verified caller asking to act for someone else.
pub fn forbidden(detail: impl Into<String>) -> HttpResponse {
    problem(StatusCode::FORBIDDEN, "forbidden", "Not yours", detail)
}

/// A repeated Idempotency-Key with another request behind it (the IETF draft's 422).
pub fn idempotency_key_reused() -> HttpResponse {
    problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "Idempotency-Key already used for another request",
        "this Idempotency-Key named an earlier task with a different kind, cost or payload; use a new key for a new task",
    )
}

pub fn conflict(detail: impl Into<String>) -> HttpResponse {
    with_header(problem(StatusCode::CONFLICT, "conflict", "Conflict", detail), header::RETRY_AFTER, "1")
}

pub fn backlog_full(max_backlog: u64, retry_after_s: i64) -> HttpResponse {
    let response = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "backlog-full",
        "Too many queued tasks for this user",
        format!("this user already has {max_backlog} tasks of this kind queued; retry when some have run"),
    );
    with_header(response, header::RETRY_AFTER, &retry_after_s.max(1).to_string())
}

/// A task whose cost no slot could ever admit: more units than a window of its policy
/// holds (for the user's tier, `None` for the built-in one). Nothing was stored.
pub fn too_costly(quota: u32, window_ms: i64, tier: Option<&str>) -> HttpResponse {
    let tier = tier.map_or("the built-in tier".to_string(), |t| format!("tier {t:?}"));
    problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "cost-over-quota",
        "The task costs more than its policy ever admits",
        format!(
            "a window of this kind's policy for {tier} admits {quota} units per {} s; the cost must be at most {quota}",
            window_ms / 1000
        ),
    )
}

/// The shared state could not be reached or did not answer in time; nothing was stored.
pub fn unavailable(detail: impl Into<String>) -> HttpResponse {
    let response = problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Shared state unavailable", detail);
    with_header(response, header::RETRY_AFTER, "1")
}

/// A fault of this service (misconfiguration or a bug); never caused by the request.
pub fn internal(detail: impl Into<String>) -> HttpResponse {
    problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", detail)
}
