//! RFC 9457 problem responses (`application/problem+json`): one constructor per case the
//! API answers, so that every 4xx/5xx says what is wrong in the same shape. Handlers return
//! `Result<HttpResponse, Problem>` and use `?`; `From<Problem> for HttpResponse` is the one
//! place a problem becomes an answer.

use crate::queue::StoreError;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use serde_json::json;

pub type HttpResponse = Response<String>;

/// A refusal or failure, not yet an answer.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    /// The last part of the `type` URN (`urn:task-api:problem:<kind>`).
    kind: &'static str,
    title: &'static str,
    detail: String,
    /// At most one field the case needs (`Allow`, `Retry-After`, `WWW-Authenticate`).
    header: Option<(HeaderName, String)>,
}

impl From<Problem> for HttpResponse {
    fn from(p: Problem) -> HttpResponse {
        let body = json!({
            "type": format!("urn:task-api:problem:{}", p.kind),
            "title": p.title,
            "status": p.status.as_u16(),
            "detail": p.detail,
        });
        let mut response = Response::new(body.to_string());
        *response.status_mut() = p.status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some((name, value)) = p.header
            && let Ok(value) = HeaderValue::from_str(&value)
        {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// Redis could not be reached or answered late (503, retry), or answered something this
/// version does not understand (500).
impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        match e {
            StoreError::Unavailable(detail) => Problem::unavailable(detail),
            StoreError::Unexpected(detail) => Problem::internal(detail),
        }
    }
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, kind, title, detail: detail.into(), header: None }
    }

    fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> Problem {
        self.header = Some((name, value.into()));
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid-request", "The request is not valid", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn method_not_allowed(allow: &str) -> Problem {
        let detail = format!("this resource allows {allow}");
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", detail)
            .with_header(header::ALLOW, allow)
    }

    pub fn too_large(limit: usize) -> Problem {
        let detail = format!("the body must be at most {limit} bytes");
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "Request body too large", detail)
    }

    pub fn payload_too_large(size: usize, limit: usize) -> Problem {
        let detail = format!("the payload is {size} bytes of JSON; it must be at most {limit}");
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Task payload too large", detail)
    }

    /// A task that can no longer be cancelled because it already ran.
    pub fn already_completed(task_id: &str, completed_at: i64) -> Problem {
        let detail =
            format!("task {task_id} completed at {completed_at} (epoch ms); only a queued task can be cancelled");
        Problem::new(StatusCode::CONFLICT, "task-completed", "The task already ran", detail)
    }

    pub fn already_failed(task_id: &str, failed_at: i64) -> Problem {
        let detail = format!("task {task_id} failed at {failed_at} (epoch ms); only a queued task can be cancelled");
        Problem::new(StatusCode::CONFLICT, "task-failed", "The task already failed", detail)
    }

    pub fn running(task_id: &str, since: i64) -> Problem {
        let detail = format!(
            "an attempt of task {task_id} (a delivery, or a worker's claim) has been in flight since {since} (epoch ms); only a queued task can be cancelled"
        );
        Problem::new(StatusCode::CONFLICT, "task-running", "The task is running", detail)
    }

    pub fn request_timeout(seconds: u64) -> Problem {
        let detail = format!("the body did not arrive within {seconds} s");
        Problem::new(StatusCode::REQUEST_TIMEOUT, "request-timeout", "Request body too slow", detail)
    }

    pub fn unsupported_media_type(got: &str) -> Problem {
        let detail = format!("send application/json, not {got:?}");
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type", detail)
    }

    /// An admin route without the admin token.
    pub fn unauthorized() -> Problem {
        let detail = "send Authorization: Bearer <admin_token>";
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Admin token required", detail)
            .with_header(header::WWW_AUTHENTICATE, "Bearer")
    }

    /// Missing or bad credentials (`auth` on). `error` is RFC 6750 §3.1's code (`""` when no
    /// credentials came, which §3.1 says to answer without one); `detail` never repeats them.
    pub fn unauthenticated(error: &str, detail: impl Into<String>) -> Problem {
        let challenge = if error.is_empty() { "Bearer".to_string() } else { format!("Bearer error=\"{error}\"") };
        Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required", detail)
            .with_header(header::WWW_AUTHENTICATE, challenge)
    }

    /// A verified caller asking to act for someone else.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Not yours", detail)
    }

    /// A repeated Idempotency-Key with another request behind it (the IETF draft's 422).
    pub fn idempotency_key_reused() -> Problem {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key already used for another request",
            "this Idempotency-Key named an earlier task with a different kind, cost or payload; use a new key for a new task",
        )
    }

    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail).with_header(header::RETRY_AFTER, "1")
    }

    pub fn backlog_full(max_backlog: u64, retry_after_s: i64) -> Problem {
        let detail = format!("this user already has {max_backlog} tasks of this kind queued; retry when some have run");
        Problem::new(StatusCode::TOO_MANY_REQUESTS, "backlog-full", "Too many queued tasks for this user", detail)
            .with_header(header::RETRY_AFTER, retry_after_s.max(1).to_string())
    }

    /// A task whose cost no slot could ever admit: more units than a window of its policy
    /// holds (for the user's tier, `None` for the built-in one). Nothing was stored.
    pub fn too_costly(quota: u32, window_ms: i64, tier: Option<&str>) -> Problem {
        let tier = tier.map_or("the built-in tier".to_string(), |t| format!("tier {t:?}"));
        let detail = format!(
            "a window of this kind's policy for {tier} admits {quota} units per {} s; the cost must be at most {quota}",
            window_ms / 1000
        );
        let title = "The task costs more than its policy ever admits";
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "cost-over-quota", title, detail)
    }

    /// The shared state could not be reached or did not answer in time; nothing was stored.
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Shared state unavailable", detail)
            .with_header(header::RETRY_AFTER, "1")
    }

    /// A fault of this service (misconfiguration or a bug); never caused by the request.
    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", detail)
    }
}
