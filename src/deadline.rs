//! Bounding how long the app waits (for a request body, and for Redis, whose client under
//! Spin has no timeout of its own), and the host clock the waiting loops take.

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

/// The host's monotonic clock and timer, as the waiting loops take them (`task_core::clock`).
pub struct SpinClock {
    start: std::time::Instant,
}

impl Default for SpinClock {
    /// A clock whose `now` counts from its creation.
    fn default() -> SpinClock {
        SpinClock { start: std::time::Instant::now() }
    }
}

impl task_core::clock::Clock for SpinClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    async fn sleep(&self, duration: Duration) {
        spin_sdk::time::sleep(duration).await
    }
}
