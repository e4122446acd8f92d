//! The Redis-triggered drainer: runs queued tasks at their slots.
//!
//! Spin has no timer trigger and its Redis trigger is plain pub/sub: every replica gets
//! every message, one message at a time, and a message nobody hears is gone.
//! So the drainers pass a baton:
//!
//! - One handler at a time holds the **lease** (a Redis key with a TTL) and *leads* for about
//!   a second: it runs what is due, sleeps until the next slot (at most `POLL`, so a task
//!   queued meanwhile with an earlier slot is seen), then **hands over**: it frees the lease
//!   and publishes a **tick** carrying its token, and returns. The next drain call of any
//!   replica takes the lease: a standby's already running, or the first to handle the tick.
//!   (Held until it lapsed, the lease went only to a replica free to hear the tick; with
//!   every replica busy helping, nobody led for up to its TTL: bench delivery, 2026-12-05.)
//! - Every other replica handles the same tick as a **standby**: it watches the lease until
//!   the next leader takes it (then returns, and will see the next tick), or until the lease
//!   expires because its holder died; then it takes over itself. Failover therefore needs no
//!   HTTP traffic and takes at most `LEASE_TTL` + `STANDBY_POLL`. A standby also **helps**:
//!   it claims and delivers the lanes the leader has left due for 20 ms or more (drain.lua),
//!   so a backlog of deliveries spreads over the replicas.
//! - A handler with deliveries in flight cannot return (its spawned work would be cancelled),
//!   so a leader past its window ticks once and leads on; when another takes the lease it
//!   **winds down**: it claims nothing more, reports its outcomes, and returns.
//! - With nothing queued the leader drops the lease and the chain stops; the next admission
//!   (or `/healthz`, or a `GET` of an unfinished task) that finds tasks waiting and no lease
//!   publishes a tick to restart it.
//!   Redis's keyspace notifications for the lease expiring, and for the alarms a leader renews
//!   (`task_core::keys::ALARM_SECONDS`) expiring once every replica has stopped, are the other
//!   wake-up paths (spin.toml).
//!
//! Running a task is atomic in Redis (`queue.rs`), so two leaders at once (one stalled past
//! its TTL) cost only work, never a doubled task.
//!
//! One delivery attempt is not the drainers': the first of a task whose slot had come at
//! admission, which the admission claims and its HTTP handler makes (`deliver_started`). The
//! drainers watch its claim like their own, and retry it if it lapses.

use crate::config::Config;
use crate::deadline::SpinClock;
use crate::keys::is_task_id;
use crate::log::print_log;
use crate::queue::new_task_id;
use crate::queue::{Drained, Queue, StoreError};
use crate::scripts::{Claim, Ended, Outcome, Sweep, Wake};
use futures::FutureExt;
use futures::future::{Either, select};
use futures::stream::{FuturesUnordered, StreamExt};
use std::mem::take;
use std::pin::{Pin, pin};
use std::time::Duration;
use task_core::clock::Clock;
use task_core::delivery::Delivery;

/// How long one handler leads before handing over: short, because a Redis handler blocks
/// every later message on its replica.
const WINDOW: Duration = Duration::from_millis(1_000);
/// Longest sleep while leading: bounds how late a newly queued, earlier task can start.
const POLL_MS: i64 = 10;
const POLL: Duration = Duration::from_millis(POLL_MS as u64);
/// How early the leader wakes before a slot; it then asks every 1 ms until the task runs, so that a
/// slot's task completes within about a millisecond of it whenever the machine allows. Measured
/// (bench scale, 10,000 users x 25, 2026-11-23): sleeping to the slot instead cut drainer
/// calls from 0.10 to 0.07 per task but let the executor's own delay grow from p99 32 ms to
/// 161 ms on the loaded cores, where a timer fires late.
const WAKE_EARLY_MS: i64 = 3;
/// A leader past its window hands over only if the next slot is at least this far away
/// (or once it has led for two windows).
const HANDOFF_CLEARANCE_MS: i64 = 50;
/// Lease lifetime; the leader renews it on every call (every `POLL_MS` at most).
const LEASE_TTL_MS: i64 = 1_000;
/// How often a standby looks at the lease.
const STANDBY_POLL: Duration = Duration::from_millis(100);
/// A standby gives up after this long. A live leader hands over within two windows, and a
/// dead one's lease lapses within `LEASE_TTL_MS`, so by then the standby has seen one or the
/// other; the bound only keeps a handler from running on if something else went wrong.
const STANDBY_MAX: Duration = Duration::from_millis(2 * WINDOW.as_millis() as u64 + LEASE_TTL_MS as u64 + 1_000);
/// Users run per script call: bounds how long one call holds Redis.
const BATCH: i64 = 256;
/// Delivery attempts claimed per script call, about. An attempt's start is counted when it is
/// claimed, and its request goes out only after the reply: a batch of 256 took ~150 ms to
/// claim and send on loaded cores (bench delivery, 2026-12-05), its last requests reaching the
/// backend that long after their counted starts.
const CLAIM_LIMIT: i64 = 16;
/// Drain calls out at once while more is due than one call takes.
const PIPELINE: usize = 6;

/// Handles one tick (or lease-expiry notification).
pub async fn on_message(message: Vec<u8>) -> anyhow::Result<()> {
    // A tick carries the token of the leader that sent it, or nothing (a kick); the keyspace
    // channel says "expired" when the lease lapsed. Other keyspace events on the lease (a
    // server configured with more flags than ours reports every renewal) are ignored, or
    // each would start a standby watch.
    let handoff = match std::str::from_utf8(&message) {
        Ok(token) if is_task_id(token) => token,
        Ok("") | Ok("expired") => "",
        _ => return Ok(()),
    };
    let config = Config::drainer().await?;
    let queue = Queue::connect(&config).await.map_err(store_error)?;
    let courier = SpinCourier { config: &config };
    lead_or_stand_by(&queue, &SpinClock::default(), &courier, &new_task_id(), handoff).await.map_err(store_error)
}

/// After a wake-up nobody heard, the first wait before publishing again; it doubles up to
/// `REWAKE_STEP_MAX`, for `REWAKE_FOR` in all.
const REWAKE_FIRST: Duration = Duration::from_millis(20);
const REWAKE_STEP_MAX: Duration = Duration::from_millis(500);
const REWAKE_FOR: Duration = Duration::from_secs(5);

/// An admission's wake-up reached no replica. Spin serves HTTP before its Redis trigger has
/// subscribed (50–90 ms later under Spin 4.1, measured 2026-12-06: it runs the trigger in a
/// process of its own), so a lone first task would wait for the next request, or for the
/// alarms, which need keyspace events that the drainer switches on only once it has led.
/// After the answer (Spin keeps a p3 HTTP instance until its spawned work has ended), this
/// publishes again, at 20, 40, 80 ms and so on, until a drainer hears it or leads, for up to
/// 5 s; and it switches the keyspace events on, so that the alarms the unheard wake-up set
/// are the backstop after that.
pub fn wake_until_heard(config: std::rc::Rc<Config>) {
    thread_local! {
        /// Whether this instance already publishes again: one loop is enough (every one looks
        /// at the same lease and queue), and where no drainer ever subscribes (a deployment
        /// without the Redis trigger) each admission would otherwise add a loop of its own.
        static REWAKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    /// Ends this instance's loop however it returns.
    struct Rewaking;
    impl Drop for Rewaking {
        fn drop(&mut self) {
            REWAKING.set(false);
        }
    }
    if REWAKING.replace(true) {
        return;
    }
    // Made here and moved in, so that it ends the loop even if the task never runs.
    let rewaking = Rewaking;
    spin_sdk::wasip3::spawn(async move {
        let _rewaking = rewaking;
        let Ok(queue) = Queue::connect(&config).await else { return };
        let _ = queue.enable_expiry_events().await;
        let clock = SpinClock::default();
        let mut wait = REWAKE_FIRST;
        while clock.now() + wait <= REWAKE_FOR {
            clock.sleep(wait).await;
            match queue.run(&Sweep { probe: false }).await {
                Ok(Wake::Unheard) | Err(_) => wait = (wait * 2).min(REWAKE_STEP_MAX),
                Ok(Wake::Heard | Wake::Quiet) => return,
            }
        }
    });
}

/// How often recording the outcome of an attempt an admission started is tried. Past that
/// its claim stays open until it lapses, and the drainers make the attempt again.
const SETTLE_TRIES: u32 = 3;
const SETTLE_RETRY: Duration = Duration::from_millis(50);

/// Makes the first attempt of a task its admission started (`Placement::Running`), after the
/// answer (Spin keeps a p3 HTTP instance until its spawned work has ended), and records its
/// outcome. A drainer would claim it only at its next call: in a burst, as late as the
/// drainers run behind. Should this instance die first, the claim lapses and a drainer makes
/// the attempt again, with the same `webhook-id`: at least once, as for the drainers' own.
pub fn deliver_started(config: std::rc::Rc<Config>, claim: Claim) {
    spin_sdk::wasip3::spawn(async move {
        let outcome = SpinCourier { config: &config }.deliver(claim).await;
        let clock = SpinClock::default();
        for _ in 0..SETTLE_TRIES {
            if let Ok(queue) = Queue::connect(&config).await
                && let Ok(ran) = queue.run(&crate::scripts::Settle { outcomes: std::slice::from_ref(&outcome) }).await
            {
                print_log(&ran);
                return;
            }
            clock.sleep(SETTLE_RETRY).await;
        }
    });
}

/// What the drainer asks of the store: the queue in Redis, or a script of answers in tests.
#[allow(async_fn_in_trait)]
pub trait DrainStore {
    /// Records `outcomes`, takes or renews the lease if it is ours to take (`handoff`: the token
    /// of the leader whose tick woke us), and runs what is due (a helper: the leader's
    /// backlog), claiming about `claim_limit` delivery attempts (0: none, and no task run).
    async fn drain(
        &self,
        token: &str,
        handoff: &str,
        outcomes: Vec<Outcome>,
        claim_limit: i64,
    ) -> Result<Drained, StoreError>;
    /// Wakes every replica's drainer; the first to hear it takes over our lease.
    async fn publish_tick(&self, token: &str) -> Result<(), StoreError>;
    /// A leader's last act: frees its lease, for the next drain call of any replica to take,
    /// and ticks.
    async fn hand_over(&self, token: &str) -> Result<(), StoreError>;
    /// Switches on the lease-expiry notification (the second wake-up path).
    async fn enable_expiry_events(&self) -> Result<(), StoreError>;
}

impl DrainStore for Queue<'_> {
    async fn drain(
        &self,
        token: &str,
        handoff: &str,
        outcomes: Vec<Outcome>,
        claim_limit: i64,
    ) -> Result<Drained, StoreError> {
        let call = crate::scripts::Drain {
            token,
            handoff,
            lease_ttl_ms: LEASE_TTL_MS,
            batch: BATCH,
            claim_limit,
            outcomes: &outcomes,
        };
        self.run(&call).await
    }

    async fn publish_tick(&self, token: &str) -> Result<(), StoreError> {
        Queue::publish_tick(self, token).await
    }

    async fn hand_over(&self, token: &str) -> Result<(), StoreError> {
        self.run(&crate::scripts::UnitScript::handover(token)).await
    }

    async fn enable_expiry_events(&self) -> Result<(), StoreError> {
        Queue::enable_expiry_events(self).await
    }
}

/// Who makes the delivery attempts the drainer claims: Spin's outbound HTTP, or a script of
/// outcomes in tests. Attempts run concurrently inside the handler, so a slow backend holds
/// only its own attempts, never the drainer's loop.
pub trait Courier {
    fn deliver(&self, claim: Claim) -> Pin<Box<dyn Future<Output = Outcome> + '_>>;
}

struct SpinCourier<'c> {
    config: &'c Config,
}

impl Courier for SpinCourier<'_> {
    fn deliver(&self, claim: Claim) -> Pin<Box<dyn Future<Output = Outcome> + '_>> {
        Box::pin(async move {
            match self.config.policies.delivery(&claim.kind) {
                Some(delivery @ Delivery { target: Some(target), .. }) => {
                    crate::delivery::deliver(&claim, target, delivery, self.config.delivery_secret.as_ref()).await
                }
                // The kind lost its target in a new configuration: nothing can deliver it.
                _ => Outcome {
                    task_id: claim.task_id,
                    attempt: claim.attempt,
                    result: Ended::Failed,
                    status: "no-target".to_string(),
                    duration_ms: None,
                    retry_after_ms: 0,
                },
            }
        })
    }
}

/// One handler's work (see the module doc): lead for about a window if the lease is ours to
/// take, or help the leader as a standby until another leader takes the lease or it lapses.
/// Leader and helpers alike claim what is due and deliver it; while more is due than one call
/// claims, each keeps `PIPELINE` calls out at once (a call spends most of its time waiting, for
/// Redis and the host). A handler with deliveries in flight does not return until they have
/// ended (a Redis handler's spawned work would be cancelled); it winds down instead: it stops
/// claiming, reports the outcomes as they come, and returns.
async fn lead_or_stand_by(
    store: &impl DrainStore,
    clock: &impl Clock,
    courier: &impl Courier,
    token: &str,
    handoff: &str,
) -> Result<(), StoreError> {
    let mut started = clock.now();
    // The lease's holder when a call first found another leading: when it changes, a new
    // leader has taken over (and ticks: we shall hear it once we return).
    let mut watched_holder: Option<String> = None;
    let mut led = false;
    // Whether the last reply said we hold the lease.
    let mut holding = false;
    let mut winding_down = false;
    let mut ticked = false;
    let mut in_flight = FuturesUnordered::new();
    let mut ended: Vec<Outcome> = Vec::new();
    // Every call reports the outcomes gathered so far and claims unless winding down.
    let next_call = move |ended: &mut Vec<Outcome>, winding_down: bool| {
        store.drain(token, handoff, take(ended), claim_limit(winding_down))
    };
    let mut calls = FuturesUnordered::new();
    calls.push(next_call(&mut ended, winding_down));
    loop {
        // Outcomes that arrive meanwhile go with the next call.
        let reply = loop {
            match select(calls.next(), in_flight.next()).await {
                Either::Left((reply, _)) => break reply,
                Either::Right((Some(outcome), _)) => ended.push(outcome),
                Either::Right((None, _)) => break calls.next().await,
            }
        };
        let Some(reply) = reply else {
            return Err(StoreError::Unexpected("the drainer had no call out".to_string()));
        };
        let (next_due_in_ms, more_due_now) = match reply? {
            Drained::Idle { ran } => {
                print_log(&ran);
                if !calls.is_empty() {
                    continue; // the later replies decide
                }
                if in_flight.is_empty() && ended.is_empty() {
                    return Ok(());
                }
                while ended.is_empty() {
                    outcome_or_nap(clock, &mut in_flight, &mut ended, POLL).await;
                }
                calls.push(next_call(&mut ended, winding_down));
                continue;
            }
            Drained::Busy { holder, next_due_in_ms, more_due_now, ran, claims } => {
                print_log(&ran);
                holding = false;
                in_flight.extend(claims.into_iter().map(|claim| courier.deliver(claim)));
                match &watched_holder {
                    // We led and another took over, or a new leader took over from the one
                    // we found.
                    _ if led => winding_down = true,
                    Some(seen) if *seen != holder => winding_down = true,
                    Some(_) => {}
                    None => watched_holder = Some(holder),
                }
                if clock.since(started) > STANDBY_MAX {
                    winding_down = true;
                }
                (next_due_in_ms, more_due_now)
            }
            Drained::Active { next_due_in_ms, more_due_now, ran, claims } => {
                print_log(&ran);
                if !holding {
                    // Just took the lease. The window counts from now: a standby that took it
                    // after helping for a window would otherwise hand it over at once. And a
                    // drainer winding down leads again: winding down, it would hold the lease
                    // and claim nothing until its deliveries ended (a hanging kind's: its
                    // timeout), the others only helping, 20 ms late.
                    started = clock.now();
                    winding_down = false;
                    ticked = false;
                }
                holding = true;
                if !led {
                    led = true;
                    // Once per window is plenty; a refusal only removes the backup path.
                    let _ = store.enable_expiry_events().await;
                }
                in_flight.extend(claims.into_iter().map(|claim| courier.deliver(claim)));
                (next_due_in_ms, more_due_now)
            }
        };
        // Polling the new deliveries once sends their requests now, at their claimed starts.
        collect_ended(&mut in_flight, &mut ended);
        if more_due_now && !winding_down {
            while calls.len() < PIPELINE {
                calls.push(next_call(&mut ended, winding_down));
            }
            continue;
        }
        if !calls.is_empty() {
            continue;
        }
        if !ended.is_empty() {
            calls.push(next_call(&mut ended, winding_down));
            continue;
        }
        if winding_down {
            if in_flight.is_empty() {
                // No lease to hand over: only a reply saying another holds it (or that we
                // helped too long) sets us winding down, and one that gives us the lease
                // makes us lead again.
                return Ok(());
            }
            while ended.is_empty() {
                outcome_or_nap(clock, &mut in_flight, &mut ended, POLL).await;
            }
            calls.push(next_call(&mut ended, winding_down));
            continue;
        }
        let elapsed = clock.since(started);
        if holding && elapsed >= WINDOW {
            // Hand over only when no slot is near (the next leader needs a few ms to start,
            // and a task due meanwhile would run late by as much) and nothing is in flight.
            if in_flight.is_empty() && (next_due_in_ms > HANDOFF_CLEARANCE_MS || elapsed >= 2 * WINDOW) {
                return store.hand_over(token).await;
            }
            // With deliveries in flight we cannot return yet, but the lease passes on: the
            // tick wakes the replicas (their drainers help while they run), the first takes
            // the lease, and we wind down. Once per handler: with no other replica to take
            // it, we lead on.
            if !in_flight.is_empty() && !ticked {
                ticked = true;
                // A refused tick only keeps us leading.
                let _ = store.publish_tick(token).await;
            }
        }
        // Sleep until just before the next slot, then ask again every millisecond until it
        // has run: a task that runs late pushes the user's next task back by as much (the
        // rule holds on completion times), so waking late would add up along a user's
        // backlog. Asking again at once instead of after 1 ms would spin: with many users a
        // slot is due every few ms, and each call that runs nothing costs a script call. A
        // delivery that ends wakes us at once: its completion is the answer's arrival.
        let left_ms = if holding && in_flight.is_empty() {
            (2 * WINDOW).saturating_sub(elapsed).as_millis() as i64
        } else {
            POLL_MS
        };
        // A helper takes only the leader's backlog (drain.lua): it looks every `POLL_MS`
        // while tasks are due, and every `STANDBY_POLL` otherwise.
        let wait_ms = if holding {
            leader_wait_ms(next_due_in_ms, left_ms)
        } else if next_due_in_ms <= 0 {
            POLL_MS
        } else {
            STANDBY_POLL.as_millis() as i64
        };
        let nap = Duration::from_millis(wait_ms.max(0) as u64);
        if in_flight.is_empty() {
            if wait_ms > 0 {
                clock.sleep(nap).await;
            }
        } else {
            outcome_or_nap(clock, &mut in_flight, &mut ended, nap).await;
        }
        calls.push(next_call(&mut ended, winding_down));
    }
}

/// How many attempts a call may claim: none while winding down.
fn claim_limit(winding_down: bool) -> i64 {
    if winding_down { 0 } else { CLAIM_LIMIT }
}

/// Waits `nap`, or until a delivery in flight ends (then takes every other that has).
async fn outcome_or_nap<F: Future<Output = Outcome>>(
    clock: &impl Clock,
    in_flight: &mut FuturesUnordered<F>,
    ended: &mut Vec<Outcome>,
    nap: Duration,
) {
    if let Either::Right((Some(outcome), _)) = select(pin!(clock.sleep(nap)), in_flight.next()).await {
        ended.push(outcome);
    }
    collect_ended(in_flight, ended);
}

/// Polls every delivery in flight once (which starts the new ones) and takes the outcomes of
/// those that have ended.
fn collect_ended<F: Future<Output = Outcome>>(in_flight: &mut FuturesUnordered<F>, ended: &mut Vec<Outcome>) {
    while let Some(Some(outcome)) = in_flight.next().now_or_never() {
        ended.push(outcome);
    }
}

/// How long a leader sleeps before its next call, with the next task due in `next_due_in_ms`
/// and `left_ms` left of its two windows: until `WAKE_EARLY_MS` before the slot, at least 1 ms
/// (a slot is due every few ms with many users, and a call at once would mostly run nothing),
/// at most `POLL_MS`.
fn leader_wait_ms(next_due_in_ms: i64, left_ms: i64) -> i64 {
    (next_due_in_ms - WAKE_EARLY_MS).clamp(1, POLL_MS).min(left_ms)
}

fn store_error(e: StoreError) -> anyhow::Error {
    anyhow::anyhow!("drainer: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_sleeps_to_just_before_the_slot_then_polls_each_millisecond() {
        assert_eq!(leader_wait_ms(500, 1_000), POLL_MS);
        assert_eq!(leader_wait_ms(WAKE_EARLY_MS + 4, 1_000), 4);
        // Within WAKE_EARLY_MS of the slot, and past it: 1 ms, never a call at once.
        for next in [WAKE_EARLY_MS, 1, 0] {
            assert_eq!(leader_wait_ms(next, 1_000), 1);
        }
        // Never past the end of its windows.
        assert_eq!(leader_wait_ms(500, 2), 2);
        assert_eq!(leader_wait_ms(500, 0), 0);
    }

    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use task_core::clock::{Manual, run_now};

    /// A store that answers `drain` from a script of replies (the last one again once the
    /// script runs out), each call taking `call` on the clock, and records what it was asked.
    struct Scripted<'c> {
        clock: &'c Manual,
        call: Duration,
        replies: RefCell<VecDeque<fn() -> Drained>>,
        last: Cell<Option<fn() -> Drained>>,
        drains: Cell<u32>,
        ticks: RefCell<Vec<String>>,
        expiry_enabled: Cell<u32>,
        /// The outcomes each drain call reported, with the clock at the call.
        reported: RefCell<Vec<(Duration, Outcome)>>,
        /// The claim limit each call was given.
        limits: RefCell<Vec<i64>>,
        /// Calls out now, and the most that were out at once.
        out: Cell<usize>,
        most_out: Cell<usize>,
    }

    impl<'c> Scripted<'c> {
        fn new(clock: &'c Manual, replies: &[fn() -> Drained]) -> Scripted<'c> {
            Scripted {
                clock,
                call: Duration::from_millis(1),
                replies: RefCell::new(replies.iter().copied().collect()),
                last: Cell::new(None),
                drains: Cell::new(0),
                ticks: RefCell::new(Vec::new()),
                expiry_enabled: Cell::new(0),
                reported: RefCell::new(Vec::new()),
                limits: RefCell::new(Vec::new()),
                out: Cell::new(0),
                most_out: Cell::new(0),
            }
        }
    }

    impl DrainStore for Scripted<'_> {
        async fn drain(
            &self,
            _token: &str,
            _handoff: &str,
            outcomes: Vec<Outcome>,
            claim_limit: i64,
        ) -> Result<Drained, StoreError> {
            self.limits.borrow_mut().push(claim_limit);
            self.out.set(self.out.get() + 1);
            self.most_out.set(self.most_out.get().max(self.out.get()));
            // Answers on a later poll, as Redis would: other calls may go out meanwhile.
            let mut answered = false;
            std::future::poll_fn(|cx| {
                if std::mem::replace(&mut answered, true) {
                    return std::task::Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            })
            .await;
            self.out.set(self.out.get() - 1);
            self.reported.borrow_mut().extend(outcomes.iter().map(|o| (self.clock.now(), o.clone())));
            self.clock.advance(self.call);
            self.drains.set(self.drains.get() + 1);
            let next = self.replies.borrow_mut().pop_front().or(self.last.get());
            self.last.set(next);
            next.map(|reply| reply()).ok_or_else(|| StoreError::Unexpected("the script ran out".to_string()))
        }

        async fn publish_tick(&self, token: &str) -> Result<(), StoreError> {
            self.ticks.borrow_mut().push(format!("tick {token}"));
            Ok(())
        }

        async fn hand_over(&self, token: &str) -> Result<(), StoreError> {
            self.ticks.borrow_mut().push(format!("handover {token}"));
            Ok(())
        }

        async fn enable_expiry_events(&self) -> Result<(), StoreError> {
            self.expiry_enabled.set(self.expiry_enabled.get() + 1);
            Ok(())
        }
    }

    /// A backend that answers every attempt `takes` after it was sent (on the clock), with
    /// `status`, and records when each attempt was sent.
    struct Backend<'c> {
        clock: &'c Manual,
        takes: Duration,
        sent: RefCell<Vec<(Duration, String)>>,
    }

    impl Courier for Backend<'_> {
        fn deliver(&self, claim: Claim) -> Pin<Box<dyn Future<Output = Outcome> + '_>> {
            let sent = self.clock.now();
            self.sent.borrow_mut().push((sent, claim.task_id.clone()));
            let done = sent + self.takes;
            Box::pin(std::future::poll_fn(move |cx| {
                if self.clock.now() < done {
                    // Asks to be polled again (a host call would wake it when its answer came).
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                std::task::Poll::Ready(Outcome {
                    task_id: claim.task_id.clone(),
                    attempt: claim.attempt,
                    result: Ended::Completed,
                    status: "200".to_string(),
                    duration_ms: Some(self.takes.as_millis() as u64),
                    retry_after_ms: 0,
                })
            }))
        }
    }

    fn backend(clock: &Manual, takes_ms: u64) -> Backend<'_> {
        Backend { clock, takes: Duration::from_millis(takes_ms), sent: RefCell::new(Vec::new()) }
    }

    fn active(claims: Vec<Claim>) -> Drained {
        Drained::Active { next_due_in_ms: 500, more_due_now: false, ran: Vec::new(), claims }
    }

    fn far() -> Drained {
        active(Vec::new())
    }

    fn near() -> Drained {
        Drained::Active {
            next_due_in_ms: HANDOFF_CLEARANCE_MS / 2,
            more_due_now: false,
            ran: Vec::new(),
            claims: Vec::new(),
        }
    }

    fn held_by(holder: &str) -> Drained {
        Drained::Busy {
            holder: holder.to_string(),
            next_due_in_ms: 500,
            more_due_now: false,
            ran: Vec::new(),
            claims: Vec::new(),
        }
    }

    fn held_by_a() -> Drained {
        held_by("a")
    }

    fn held_by_b() -> Drained {
        held_by("b")
    }

    fn idle() -> Drained {
        Drained::Idle { ran: Vec::new() }
    }

    fn claim(id: &str) -> Claim {
        Claim {
            task_id: id.to_string(),
            user_id: "ann".to_string(),
            kind: "mail".to_string(),
            cost: 1,
            attempt: 1,
            slot: 0,
            started_at: 0,
            payload: None,
            token: None,
            deadline: 10_000,
        }
    }

    fn claims_two() -> Drained {
        active(vec![claim("t1"), claim("t2")])
    }

    fn run(store: &Scripted, clock: &Manual, courier: &Backend, handoff: &str) -> Result<(), StoreError> {
        run_now(lead_or_stand_by(store, clock, courier, "me", handoff))
    }

    #[test]
    fn with_nothing_queued_the_handler_returns_without_a_tick() {
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[idle]);
        assert!(run(&store, &clock, &backend(&clock, 0), "").is_ok());
        assert_eq!((store.drains.get(), store.ticks.borrow().len(), clock.sleeps()), (1, 0, 0));
    }

    /// A leader with nothing due soon polls every `POLL_MS`, switches the expiry events on
    /// once, and hands over with its own token after one window.
    #[test]
    fn a_leader_hands_over_after_one_window_when_no_slot_is_near() {
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[far]);
        assert!(run(&store, &clock, &backend(&clock, 0), "").is_ok());
        assert_eq!(*store.ticks.borrow(), ["handover me"]);
        assert_eq!(store.expiry_enabled.get(), 1);
        assert!(clock.now() >= WINDOW && clock.now() < WINDOW + Duration::from_millis(2 * POLL_MS as u64));
        // Each call but the last is followed by a poll's sleep: k calls end at k * (poll + call) - poll.
        let per_call = (Duration::from_millis(POLL_MS as u64) + store.call).as_millis();
        assert_eq!(u128::from(store.drains.get()), (WINDOW.as_millis() + POLL_MS as u128).div_ceil(per_call));
    }

    /// With a slot always near, a leader keeps leading past one window, and hands over at two.
    #[test]
    fn a_leader_keeps_a_near_slot_until_two_windows() {
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[near]);
        assert!(run(&store, &clock, &backend(&clock, 0), "").is_ok());
        assert_eq!(*store.ticks.borrow(), ["handover me"]);
        assert!(clock.now() >= 2 * WINDOW && clock.now() < 2 * WINDOW + Duration::from_millis(POLL_MS as u64 + 2));
    }

    /// More due now: the leader calls again without sleeping, with `PIPELINE` calls out at
    /// once, and returns once every call out has answered idle.
    #[test]
    fn a_leader_with_more_due_calls_again_at_once() {
        fn more() -> Drained {
            Drained::Active { next_due_in_ms: 0, more_due_now: true, ran: Vec::new(), claims: Vec::new() }
        }
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[more, more, more, idle]);
        assert!(run(&store, &clock, &backend(&clock, 0), "").is_ok());
        assert_eq!((clock.sleeps(), store.expiry_enabled.get(), store.most_out.get()), (0, 1, PIPELINE));
        // The three that said more, each followed by a full pipeline: answered idle.
        assert_eq!(store.drains.get() as usize, 3 + PIPELINE);
        assert_eq!(store.out.get(), 0);
    }

    /// Without more due, one call at a time.
    #[test]
    fn a_leader_with_nothing_more_due_keeps_one_call_out() {
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[claims_two, far]);
        assert!(run(&store, &clock, &backend(&clock, 100), "").is_ok());
        assert_eq!(store.most_out.get(), 1);
    }

    /// A standby returns as soon as the lease changes hands (the new leader will tick)...
    #[test]
    fn a_standby_returns_when_a_new_leader_takes_the_lease() {
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[held_by_a, held_by_a, held_by_a, held_by_b]);
        assert!(run(&store, &clock, &backend(&clock, 0), "a").is_ok());
        assert_eq!((store.drains.get(), clock.sleeps(), store.ticks.borrow().len()), (4, 3, 0));
    }

    /// ...and gives up after `STANDBY_MAX` if the same holder keeps it all along.
    #[test]
    fn a_standby_gives_up_after_its_bound() {
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[held_by_a]);
        assert!(run(&store, &clock, &backend(&clock, 0), "").is_ok());
        assert!(clock.now() > STANDBY_MAX && clock.now() <= STANDBY_MAX + STANDBY_POLL + store.call);
        assert_eq!(store.ticks.borrow().len(), 0);
    }

    /// The lease's holder died: `drain` takes it over and the standby becomes the leader.
    #[test]
    fn a_standby_takes_over_a_lapsed_lease() {
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[held_by_a, held_by_a, idle]);
        assert!(run(&store, &clock, &backend(&clock, 0), "").is_ok());
        assert_eq!((store.drains.get(), clock.sleeps()), (3, 2));
    }

    /// A standby that takes the lease leads for a whole window from then, however long it
    /// helped before: counted from the handler's start, it handed over at once, and with every
    /// replica busy helping, nobody heard the tick and nobody led until the lease lapsed.
    #[test]
    fn a_standby_that_takes_the_lease_leads_a_window_from_then() {
        let clock = Manual::new();
        let mut replies: Vec<fn() -> Drained> = vec![held_by_a; 15];
        replies.push(far);
        let store = Scripted::new(&clock, &replies);
        assert!(run(&store, &clock, &backend(&clock, 0), "").is_ok());
        let took = 16 * store.call + 15 * STANDBY_POLL;
        assert!(clock.now() >= took + WINDOW, "handed over at {:?}, took the lease at {took:?}", clock.now());
        assert!(clock.now() < took + WINDOW + Duration::from_millis(2 * POLL_MS as u64), "{:?}", clock.now());
        assert_eq!(*store.ticks.borrow(), ["handover me"]);
    }

    /// Claimed attempts are sent at once, and each outcome is reported by the first drain
    /// call after it arrives, within a poll's sleep.
    #[test]
    fn claims_are_sent_at_once_and_their_outcomes_reported_when_they_arrive() {
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[claims_two, far]);
        let courier = backend(&clock, 100);
        assert!(run(&store, &clock, &courier, "").is_ok());
        let sent = courier.sent.borrow();
        assert_eq!(sent.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(), ["t1", "t2"]);
        // Sent right after the call that claimed them (which took `call`).
        assert!(sent.iter().all(|(at, _)| *at == store.call));
        let reported = store.reported.borrow();
        assert_eq!(reported.iter().map(|(_, o)| o.task_id.as_str()).collect::<Vec<_>>(), ["t1", "t2"]);
        for (at, _) in reported.iter() {
            let answered = store.call + courier.takes;
            assert!(*at >= answered && *at <= answered + Duration::from_millis(POLL_MS as u64), "{at:?}");
        }
    }

    /// A leader whose deliveries are still in flight at the end of its window does not return
    /// (that would cancel them) but ticks once, for another replica to take the lease; with
    /// none taking it, it leads on until they end, then hands over.
    #[test]
    fn a_leader_does_not_return_with_deliveries_in_flight() {
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[claims_two, far]);
        let takes = 3 * WINDOW.as_millis() as u64;
        let courier = backend(&clock, takes);
        assert!(run(&store, &clock, &courier, "").is_ok());
        assert_eq!(store.reported.borrow().len(), 2);
        // The tick at the window's end leaves the lease held: it leads on.
        assert_eq!(*store.ticks.borrow(), ["tick me", "handover me"]);
        assert!(clock.now() >= Duration::from_millis(takes));
        assert!(store.limits.borrow().iter().all(|&limit| limit == CLAIM_LIMIT));
    }

    /// A leader whose lease another took winds down: it claims nothing more, reports its
    /// outcomes, and returns once they are in, without a tick (the new leader ticks).
    #[test]
    fn a_leader_that_lost_the_lease_winds_down() {
        fn taken() -> Drained {
            held_by("b")
        }
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[claims_two, taken]);
        let courier = backend(&clock, 100);
        assert!(run(&store, &clock, &courier, "").is_ok());
        assert_eq!(store.reported.borrow().len(), 2);
        assert!(store.ticks.borrow().is_empty());
        let limits = store.limits.borrow();
        assert_eq!(limits[..2], [CLAIM_LIMIT, CLAIM_LIMIT]);
        assert!(limits[2..].iter().all(|&limit| limit == 0), "{limits:?}");
    }

    /// A leader winding down that takes the lease again (freed by the one that took it) leads
    /// again: it claims, where winding down it would hold the lease and claim nothing.
    #[test]
    fn a_drainer_winding_down_that_takes_the_lease_leads_again() {
        fn taken() -> Drained {
            held_by("b")
        }
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[claims_two, taken, far]);
        let courier = backend(&clock, 100);
        assert!(run(&store, &clock, &courier, "").is_ok());
        let limits = store.limits.borrow();
        assert_eq!(limits[..3], [CLAIM_LIMIT, CLAIM_LIMIT, 0], "{limits:?}");
        assert!(limits[3..].iter().all(|&limit| limit == CLAIM_LIMIT), "{limits:?}");
        // It led a window from taking the lease back, and handed over.
        assert_eq!(store.ticks.borrow().last().map(String::as_str), Some("handover me"));
        assert!(clock.now() >= WINDOW, "{:?}", clock.now());
    }

    /// A helper (another leads) claims and delivers as the leader does, and when the lease
    /// changes hands it winds down and returns once its outcomes are reported.
    #[test]
    fn a_helper_delivers_what_it_claims_and_winds_down_when_the_leader_changes() {
        fn helping() -> Drained {
            Drained::Busy {
                holder: "a".to_string(),
                next_due_in_ms: 500,
                more_due_now: false,
                ran: Vec::new(),
                claims: vec![claim("t1")],
            }
        }
        let clock = Manual::new();
        let store = Scripted::new(&clock, &[helping, held_by_a, held_by_b]);
        let courier = backend(&clock, 100);
        assert!(run(&store, &clock, &courier, "").is_ok());
        assert_eq!(courier.sent.borrow().len(), 1);
        assert_eq!(store.reported.borrow().len(), 1);
        assert!(store.ticks.borrow().is_empty());
    }
}
