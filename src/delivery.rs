//! Delivering one claimed attempt: the signed `POST` to its kind's target, and how it ended.
//!
//! The request is the envelope (`task_core::delivery::envelope`) with the Standard Webhooks
//! headers: `webhook-id` is the task id on every attempt (the backend's idempotency key),
//! `webhook-timestamp` this attempt's Unix seconds, and `webhook-signature` when the
//! `delivery_secret` variable holds one. Nothing else of ours is sent: no token, no key.
//!
//! Spin waits up to 600 s for a connection, a first byte and each later byte unless the
//! guest says otherwise, so every attempt sets all three to its kind's timeout, and the
//! answer's head is also awaited at most that long on our own clock. The head decides the
//! outcome; the body is read (and dropped) only in what is left of that time.

use crate::deadline::with_deadline;
use crate::scripts::{Claim, Ended, Outcome};
use http_body_util::BodyExt;
use spin_sdk::http::{FullBody, send};
use spin_sdk::wasip3::http::types::{ErrorCode, RequestOptions};
use spin_sdk::wasip3::http_compat::RequestOptionsExtension;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use task_core::delivery::{Delivery, Secret, Verdict, envelope, retry_after_ms, verdict};

/// How much of an answer's body is read (and dropped): reading it to its end lets Spin's
/// pool reuse the connection; a larger body is cut, and its connection is not reused.
const MAX_ANSWER_BODY: usize = 64 * 1024;
/// The longest `Retry-After` honoured: a day, the longest window a policy may have.
const MAX_RETRY_AFTER_MS: i64 = 24 * 3_600_000;

/// Makes the attempt `claim` names to `target` (its kind's, with `delivery`'s limits) and
/// says how it ended.
pub async fn deliver(claim: &Claim, target: &str, delivery: &Delivery, secret: Option<&Secret>) -> Outcome {
    let limit = Duration::from_millis(u64::from(delivery.timeout_ms));
    let ended = attempt(claim, target, secret, limit).await;
    let outcome = |result, status: String, duration_ms, retry_after_ms| Outcome {
        task_id: claim.task_id.clone(),
        attempt: claim.attempt,
        result,
        status,
        duration_ms,
        retry_after_ms,
    };
    match ended {
        Attempt::Answered { status, retry_after_ms, head_after } => {
            let result = match verdict(status) {
                Verdict::Completed => Ended::Completed,
                Verdict::Retry => Ended::Retry,
                Verdict::Failed => Ended::Failed,
            };
            outcome(result, status.to_string(), Some(head_after.as_millis() as u64), retry_after_ms)
        }
        // A host that is not allowed will never be: retrying would only repeat it.
        Attempt::Error(name @ "denied") => outcome(Ended::Failed, name.to_string(), None, 0),
        Attempt::Error(name) => outcome(Ended::Retry, name.to_string(), None, 0),
    }
}

/// What one attempt got.
enum Attempt {
    /// An answer: its status, its `Retry-After` (ms, 0 for none), and how long its head took.
    Answered { status: u16, retry_after_ms: i64, head_after: Duration },
    /// No answer: the error's name, as the task's record and the log keep it.
    Error(&'static str),
}

async fn attempt(claim: &Claim, target: &str, secret: Option<&Secret>, limit: Duration) -> Attempt {
    let body = envelope(
        &claim.task_id,
        &claim.user_id,
        &claim.kind,
        claim.cost,
        claim.attempt,
        claim.slot,
        claim.payload.as_deref(),
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let timestamp = now.as_secs() as i64;
    let options = RequestOptions::new();
    let nanos = Some(limit.as_nanos() as u64);
    // A host may refuse to take an option; the deadline around the attempt still holds.
    let _ = options.set_connect_timeout(nanos);
    let _ = options.set_first_byte_timeout(nanos);
    let _ = options.set_between_bytes_timeout(nanos);
    let mut request = http::Request::post(target)
        .header("content-type", "application/json")
        // Sent with its length rather than chunked: some backends read only a sized body.
        .header("content-length", body.len())
        .header("webhook-id", &claim.task_id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(secret) = secret {
        request = request.header("webhook-signature", secret.sign(&claim.task_id, timestamp, &body));
    }
    let Ok(request) = request.extension(RequestOptionsExtension(options)).body(FullBody::new(bytes::Bytes::from(body)))
    else {
        return Attempt::Error("request");
    };
    let sent = Instant::now();
    let response = match with_deadline(send(request), limit).await {
        Some(Ok(response)) => response,
        Some(Err(e)) => return Attempt::Error(error_name(&e)),
        None => return Attempt::Error("timeout"),
    };
    let head_after = sent.elapsed();
    let status = response.status().as_u16();
    let retry_after_ms = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after_ms(v, now.as_millis() as i64))
        .map_or(0, |ms| ms.min(MAX_RETRY_AFTER_MS));
    // The head decided the outcome. Read (and drop) the body, within what is left of the
    // attempt's time, so that the connection goes back to the pool.
    let mut body = response.into_body();
    let drain = async {
        let mut read = 0;
        while read <= MAX_ANSWER_BODY {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    };
    let _ = with_deadline(drain, limit.saturating_sub(head_after)).await;
    Attempt::Answered { status, retry_after_ms, head_after }
}

/// A short name for a failed request, as the task's record and the log keep it.
fn error_name(e: &ErrorCode) -> &'static str {
    match e {
        ErrorCode::HttpRequestDenied => "denied",
        ErrorCode::DnsTimeout | ErrorCode::DnsError(_) => "dns",
        ErrorCode::ConnectionRefused => "connection-refused",
        ErrorCode::ConnectionTimeout => "connect-timeout",
        ErrorCode::ConnectionReadTimeout | ErrorCode::ConnectionWriteTimeout => "timeout",
        ErrorCode::ConnectionTerminated | ErrorCode::ConnectionLimitReached => "connection-closed",
        ErrorCode::TlsProtocolError | ErrorCode::TlsCertificateError | ErrorCode::TlsAlertReceived(_) => "tls",
        _ => "connection",
    }
}
