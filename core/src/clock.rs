//! The one clock of the component's waiting loops (admission's waits, the ledger's commit
//! budget, the drainer's leading and standing by), as governor's limiters take `C: Clock`:
//! the loops take it as a parameter, so their logic is tested with `Manual`, whose sleeps
//! return at once and move its time on.
//!
//! This clock only measures how long something took and waits: slots and completion times
//! never come from it but from the Redis server's `TIME`, the same for every replica.

use std::cell::Cell;
use std::time::Duration;

/// A monotonic clock that can wait.
// A component runs on one thread: its futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Clock {
    /// Time since a fixed point of this clock's own (its creation, say).
    fn now(&self) -> Duration;

    /// Waits `duration`.
    async fn sleep(&self, duration: Duration);

    /// Time since `start`, an earlier `now()`.
    fn since(&self, start: Duration) -> Duration {
        self.now().saturating_sub(start)
    }
}

/// A clock that moves only when slept on or told to: every sleep returns at once, `duration`
/// later. For tests of the loops above.
#[derive(Debug, Default)]
pub struct Manual {
    now: Cell<Duration>,
    slept: Cell<u32>,
}

impl Manual {
    pub fn new() -> Manual {
        Manual::default()
    }

    /// Moves time on by `duration` (time that passes while something else runs).
    pub fn advance(&self, duration: Duration) {
        self.now.set(self.now.get() + duration);
    }

    /// How many times it was slept on.
    pub fn sleeps(&self) -> u32 {
        self.slept.get()
    }
}

impl Clock for Manual {
    fn now(&self) -> Duration {
        self.now.get()
    }

    async fn sleep(&self, duration: Duration) {
        self.slept.set(self.slept.get() + 1);
        self.advance(duration);
    }
}

/// Runs a future that never waits on anything but a `Manual` clock (whose sleeps are ready at
/// once) to completion, without an executor.
pub fn run_now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_slept_on_or_advanced() {
        let clock = Manual::new();
        let start = clock.now();
        run_now(clock.sleep(Duration::from_millis(5)));
        clock.advance(Duration::from_millis(2));
        assert_eq!(clock.since(start), Duration::from_millis(7));
        assert_eq!(clock.sleeps(), 1);
        assert_eq!(clock.since(Duration::from_secs(1)), Duration::ZERO);
    }
}
