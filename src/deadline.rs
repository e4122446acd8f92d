//! Bounding how long the app waits: for a request body, and for Redis, whose client under
//! Spin has no timeout of its own.

use std::time::Duration;

/// `future`'s output, or `None` if it takes longer than `limit` (the future is then dropped,
/// which cancels a pending host call).
pub async fn with_deadline<F: Future>(future: F, limit: Duration) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut timer = std::pin::pin!(spin_sdk::time::sleep(limit));
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(output));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}
