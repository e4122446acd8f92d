//! A DELETE racing the executor, hundreds of times: each task is either cancelled (and
//! never runs) or has run (and the DELETE says 409), never both and never neither. Both are
//! one Redis script each (`cancel.lua`, `run_due` in `lib.lua`), so Redis orders them.
//!
//! Each of 300 users gets a task that runs at once and a second one queued for a second
//! later; a DELETE of the second is sent at its slot, give or take a few ms,
//! to a replica other than the one that admitted it, while the drainer runs it.

use crate::support;
use crate::test_rng;

use std::collections::HashMap;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{Host, HostOptions, Redis, app_key, check, read_log, request, wait_until};
use task_core::keys::word;
use test_rng::XorShift;

const USERS: usize = 300;
/// DELETEs go out up to this many ms either side of the slot (spread evenly by a seeded
/// generator). The executor runs a task within a ms or two of its slot and a DELETE takes
/// about 1 ms on loopback, so the outcome flips within this spread.
const SPREAD_MS: i64 = 8;
/// Enough that a DELETE never waits for a free sender: the fire times of ~20 tasks overlap.
const SENDERS: usize = 32;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[test]
fn a_cancel_racing_the_executor_either_cancels_or_finds_it_ran() {
    let redis = Redis::start();
    let hosts = Arc::new([Host::start(&redis, &HostOptions::default()), Host::start(&redis, &HostOptions::default())]);

    // The senders take (task id, when to send) in slot order and send the DELETE then.
    let (to_send, queue) = channel::<(String, i64, i64)>();
    let queue = Arc::new(Mutex::new(queue));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (queue, outcomes, hosts) = (queue.clone(), outcomes.clone(), hosts.clone());
            std::thread::spawn(move || {
                loop {
                    let next = queue.lock().ok().and_then(|q| q.recv().ok());
                    let Some((task_id, slot, offset)) = next else { break };
                    // Timing is the point here: the DELETE must meet the executor at the slot.
                    let wait = slot + offset - now_ms();
                    if wait > 0 {
                        std::thread::sleep(Duration::from_millis(wait as u64));
                    }
                    let reply = request(&hosts[1].addr, "DELETE", &format!("/api/v1/task/{task_id}"), &[], b"");
                    if let Ok(mut outcomes) = outcomes.lock() {
                        outcomes.push((task_id, offset, reply.status, reply.body));
                    }
                }
            })
        })
        .collect();

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut next_offset = || rng.next(2 * SPREAD_MS as u64 + 1) as i64 - SPREAD_MS;
    for u in 0..USERS {
        let body = format!(r#"{{"user_id":"race-{u}"}}"#);
        assert_eq!(hosts[0].post_task(&body).status, 200);
        let queued = hosts[0].post_task(&body);
        assert_eq!(queued.status, 202, "{}", queued.body);
        let queued = queued.json();
        let (task_id, slot) =
            (queued["task_id"].as_str().unwrap_or_default().to_string(), queued["slot"].as_i64().unwrap_or(0));
        assert!(to_send.send((task_id, slot, next_offset())).is_ok());
    }
    drop(to_send);
    for sender in senders {
        assert!(sender.join().is_ok(), "a sender panicked");
    }
    let outcomes = outcomes.lock().map(|o| o.clone()).unwrap_or_default();
    assert_eq!(outcomes.len(), USERS);

    // Nothing is left to run once the queue is empty: then the log is final.
    let queued = || redis.query::<Option<i64>>(&["HGET", &app_key(word::METRICS), "queued"]);
    wait_until(Duration::from_secs(30), || format!("{:?} tasks still queued", queued()), || queued() == Some(0));

    let entries = read_log(&hosts[0]);
    let report = check::check(&entries, check::Rule::default(), None);
    assert!(report.is_clean(), "{}", report.problems());
    let ran: HashMap<&str, usize> =
        entries.iter().filter_map(|e| e.task_id.as_deref()).fold(HashMap::new(), |mut m, id| {
            *m.entry(id).or_default() += 1;
            m
        });
    let (mut cancelled, mut too_late) = (Vec::new(), Vec::new());
    for (task_id, offset, status, body) in &outcomes {
        let record = hosts[0].get(&format!("/api/v1/task/{task_id}")).json();
        match status {
            200 => {
                assert_eq!(ran.get(task_id.as_str()), None, "{task_id} was cancelled and ran too");
                assert_eq!(record["status"], "cancelled", "{record}");
                cancelled.push(*offset);
            }
            409 => {
                assert_eq!(
                    ran.get(task_id.as_str()),
                    Some(&1),
                    "{task_id} answered 409 but ran {:?} times",
                    ran.get(task_id.as_str())
                );
                assert_eq!(record["status"], "completed", "{record}");
                too_late.push(*offset);
            }
            other => panic!("DELETE {task_id} answered {other}: {body}"),
        }
    }
    assert_eq!(entries.len(), USERS + too_late.len(), "{}", report.summary());
    let metrics = hosts[0].get("/metrics").body;
    let counted =
        metrics.lines().find_map(|l| l.strip_prefix("task_api_cancelled_total ")).and_then(|v| v.parse::<usize>().ok());
    assert_eq!(counted, Some(cancelled.len()), "{metrics}");

    // The race was run both ways, not just on one side of it.
    let mean = |v: &[i64]| v.iter().sum::<i64>() as f64 / v.len().max(1) as f64;
    println!(
        "{USERS} races: {} cancelled (mean offset {:+.1} ms), {} had run (mean offset {:+.1} ms); {}",
        cancelled.len(),
        mean(&cancelled),
        too_late.len(),
        mean(&too_late),
        report.summary()
    );
    assert!(!cancelled.is_empty() && !too_late.is_empty(), "every DELETE fell on one side of the race");
}
