//! Failures end to end (docs/failures.md): replicas killed with SIGKILL, Redis killed and restarted with an
//! append-only file, and a chaos run doing both under load. Nothing acknowledged may be lost
//! or run twice, and the log must keep the rule.
//!
//! The chaos run is short by default (CI); `CHAOS=full` runs the long one:
//! `CHAOS=full cargo test -p runtime-tests --test e2e failures::chaos -- --nocapture`.

use crate::support;
use crate::test_rng;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Host, HostOptions, Redis, app_key, check, read_log, try_post_task, try_request, wait_until};
use task_core::keys::{ALARM_SECONDS, alarm_word, word};
use test_rng::XorShift;

/// Waits until Redis's log stream holds `count` entries; fails the test, showing `host`'s
/// stderr, if it does not within `timeout`.
fn wait_for_log(redis: &Redis, host: &Host, count: usize, timeout: Duration) {
    let what = || format!("{} of {count} tasks in the log; stderr:\n{}", redis.log_len(), host.stderr_text());
    wait_until(timeout, what, || redis.log_len() >= count);
}

/// The replica that printed the most recent completion: the drainer's current leader.
fn latest_runner(hosts: &[Host], alive: &[usize]) -> usize {
    let last_time = |h: &Host| -> i64 {
        h.stderr
            .lock()
            .ok()
            .and_then(|lines| lines.iter().rev().find_map(|l| check::parse_line(l)).map(|e| e.completed_at))
            .unwrap_or(0)
    };
    alive.iter().copied().max_by_key(|&i| last_time(&hosts[i])).unwrap_or(alive[0])
}

/// Submits `per_user` rounds of one task for each of `users` users (`<prefix><n>`), spread
/// over `hosts`; the acknowledged task ids.
fn submit_rounds(hosts: &[Host], prefix: &str, users: usize, per_user: usize) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for round in 0..per_user {
        for u in 0..users {
            let reply = hosts[(round * users + u) % hosts.len()].post_task(&format!(r#"{{"user_id":"{prefix}{u}"}}"#));
            assert!(reply.status == 200 || reply.status == 202, "{}", reply.body);
            acknowledged.push(reply.json()["task_id"].as_str().unwrap_or_default().to_string());
        }
    }
    acknowledged
}

/// Kill two of three replicas, each time the one currently running tasks; the last one
/// finishes the queue with no HTTP traffic at all.
#[test]
fn killed_replicas_lose_nothing_and_the_survivor_keeps_draining() {
    let redis = Redis::start();
    // One task per second per user and no minute window, so the queue drains in seconds.
    let options = HostOptions { variables: vec![("per_minute".into(), "0".into())], ..HostOptions::default() };
    let mut hosts: Vec<Host> = (0..3).map(|_| Host::start(&redis, &options)).collect();
    let (users, per_user) = (6, 8);
    let acknowledged = submit_rounds(&hosts, "u", users, per_user);
    let total = users * per_user;
    let mut alive = vec![0, 1, 2];
    for victims_left in [2, 1] {
        let done_so_far: usize = redis.query(&["XLEN", "task_log"]);
        wait_for_log(&redis, &hosts[alive[0]], done_so_far + users, Duration::from_secs(30));
        let victim = latest_runner(&hosts, &alive);
        hosts[victim].kill();
        alive.retain(|&i| i != victim);
        assert_eq!(alive.len(), victims_left);
    }
    let survivor = &hosts[alive[0]];
    wait_for_log(&redis, survivor, total, Duration::from_secs(60));

    let entries = read_log(survivor);
    let report = check::check(&entries, check::Rule { per_second: 1, per_minute: 0 }, Some(&acknowledged));
    assert!(report.is_clean(), "{}", report.problems());
    assert_eq!(entries.len(), total);
    println!("replica loss: {}", report.summary());
}

/// Every replica killed while tasks wait, and fresh ones started after the dead leader's
/// lease has lapsed with nobody to hear it: with no request at all (no probe, no admission,
/// no poll), the drainers' alarm wakes the fresh replicas and the queue drains, every task
/// once and on the rule.
#[test]
fn replicas_back_after_every_one_died_resume_with_no_request() {
    let redis = Redis::start();
    let options = HostOptions { variables: vec![("per_minute".into(), "0".into())], ..HostOptions::default() };
    let mut hosts: Vec<Host> = (0..2).map(|_| Host::start(&redis, &options)).collect();
    let (users, per_user) = (4, 6);
    let acknowledged = submit_rounds(&hosts, "a", users, per_user);
    let total = users * per_user;
    // A second round has run: a drainer leads (and has set the alarms).
    wait_for_log(&redis, &hosts[0], 2 * users, Duration::from_secs(30));
    for host in &mut hosts {
        host.kill();
    }
    let ran_before = redis.log_len();
    assert!(ran_before < total, "the queue drained before the kill");
    redis.wait_for_the_lease_to_lapse();
    // Started side by side, to be back before the 5 s alarm goes off.
    let fresh: Vec<Host> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..2).map(|_| s.spawn(|| Host::start(&redis, &options))).collect();
        starting.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    assert_eq!(fresh.len(), 2, "a fresh replica did not start");
    let back = Instant::now();
    // On a machine too loaded to start them in time, the 5 s alarm went off unheard and the
    // 1 min one would wake them: it is brought forward to 1 s rather than waited for.
    let alarm = |s: u32| app_key(&alarm_word(s));
    let brought_forward = redis.query::<i64>(&["PTTL", &alarm(ALARM_SECONDS[0])]) < 0;
    if brought_forward {
        assert_eq!(redis.query::<i64>(&["PEXPIRE", &alarm(ALARM_SECONDS[1]), "1000"]), 1, "no alarm left pending");
    }
    wait_for_log(&redis, &fresh[0], ran_before + 1, Duration::from_secs(30));
    let resumed_after = back.elapsed();
    wait_for_log(&redis, &fresh[0], total, Duration::from_secs(30));
    let entries = read_log(&fresh[1]);
    let report = check::check(&entries, check::Rule { per_second: 1, per_minute: 0 }, Some(&acknowledged));
    assert!(report.is_clean(), "{}", report.problems());
    println!(
        "every replica killed with {} of {total} tasks left: fresh replicas resumed {:.1} s after they started, with no \
         request, woken by the {} alarm",
        total - ran_before,
        resumed_after.as_secs_f64(),
        if brought_forward { "1 min (brought forward)" } else { "5 s" }
    );
}

struct Scale {
    users: usize,
    tasks_per_user: usize,
    /// Seconds between SIGKILLs of a random replica.
    kill_every: Duration,
    kills: usize,
}

impl Scale {
    fn from_env() -> Scale {
        match std::env::var("CHAOS").as_deref() {
            Ok("full") => Scale { users: 300, tasks_per_user: 10, kill_every: Duration::from_secs(3), kills: 8 },
            _ => Scale { users: 40, tasks_per_user: 4, kill_every: Duration::from_secs(2), kills: 3 },
        }
    }
}

/// 3 replicas, tasks submitted by several clients (retrying with an Idempotency-Key on
/// refused connections and 503s) who also cancel every fourth task they got queued (retrying
/// the DELETE the same way), random SIGKILLs of replicas (restarted as a supervisor would),
/// and one SIGKILL of Redis running with `appendfsync always` (replicas exit when their
/// subscription drops, and are restarted once Redis is back). Then the whole log is checked:
/// every acknowledged task that was not cancelled exactly once, no cancelled task at all,
/// zero rule violations.
#[test]
fn chaos() {
    let scale = Scale::from_env();
    let mut redis = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let options = HostOptions::default();
    let mut hosts: Vec<Host> = (0..3).map(|_| Host::start(&redis, &options)).collect();
    let addrs = Arc::new(Mutex::new(hosts.iter().map(|h| h.addr.clone()).collect::<Vec<_>>()));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let cancelled = Arc::new(Mutex::new(Vec::new()));
    let outage_503s = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();

    let jobs: Vec<(String, String)> = (0..scale.tasks_per_user)
        .flat_map(|k| (0..scale.users).map(move |u| (format!("user-{u}"), format!("job-{u}-{k}"))))
        .collect();
    let clients: Vec<_> = jobs
        .chunks(jobs.len().div_ceil(4))
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let (addrs, acknowledged, cancelled, outage_503s) =
                (addrs.clone(), acknowledged.clone(), cancelled.clone(), outage_503s.clone());
            let replica = move |i: usize| addrs.lock().ok().and_then(|a| a.get(i % a.len().max(1)).cloned());
            std::thread::spawn(move || {
                for (i, (user, key)) in chunk.iter().enumerate() {
                    let mut queued = None;
                    for attempt in 0..200 {
                        let Some(addr) = replica(i + attempt) else { continue };
                        match try_post_task(&addr, user, Some(key)) {
                            Ok(reply) if reply.status == 200 || reply.status == 202 => {
                                let id = reply.json()["task_id"].as_str().unwrap_or_default().to_string();
                                if reply.status == 202 {
                                    queued = Some(id.clone());
                                }
                                if let Ok(mut ack) = acknowledged.lock() {
                                    ack.push(id);
                                }
                                break;
                            }
                            Ok(reply) if reply.status == 503 => {
                                if let Ok(mut times) = outage_503s.lock() {
                                    times.push(reply.elapsed);
                                }
                            }
                            Ok(reply) => assert!(reply.status == 409, "{} {}", reply.status, reply.body),
                            Err(_) => {}
                        }
                        // Client back-off before retrying, as a real client would.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    // Every fourth queued task is withdrawn, from another replica: 200 means
                    // cancelled (also for a repeat after a lost answer), 409 that it already ran.
                    if let Some(id) = queued.filter(|_| i % 4 == 1) {
                        for attempt in 1..200 {
                            let Some(addr) = replica(i + attempt) else { continue };
                            match try_request(&addr, "DELETE", &format!("/api/v1/task/{id}"), &[], b"") {
                                Ok(reply) if reply.status == 200 => {
                                    if let Ok(mut cancelled) = cancelled.lock() {
                                        cancelled.push(id);
                                    }
                                    break;
                                }
                                Ok(reply) if reply.status == 409 => break,
                                Ok(reply) => assert!(reply.status == 503, "DELETE: {} {}", reply.status, reply.body),
                                Err(_) => {}
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                    // Spread the load over time so that the failures hit admission too.
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();

    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    for kill in 0..scale.kills {
        // The chaos's own schedule: a kill every so often while the clients run.
        std::thread::sleep(scale.kill_every);
        if kill == scale.kills / 2 {
            // Redis dies: every replica exits as Spin does; the supervisor restarts them.
            redis.kill();
            for host in &mut hosts {
                let what = || "a replica kept running without its subscription".to_string();
                wait_until(Duration::from_secs(10), what, || host.exited().is_some());
                assert!(host.exited().is_some_and(|s| !s.success()), "a replica exited 0 when Redis died");
            }
            redis.restart();
            hosts = (0..3).map(|_| Host::start(&redis, &options)).collect();
        } else {
            let victim = rng.next(hosts.len() as u64) as usize;
            hosts[victim].kill();
            hosts[victim] = Host::start(&redis, &options);
        }
        if let Ok(mut a) = addrs.lock() {
            *a = hosts.iter().map(|h| h.addr.clone()).collect();
        }
        // The liveness probe a supervisor runs; it also sweeps up stranded tasks.
        assert_eq!(hosts[0].get("/healthz").status, 200);
    }
    for client in clients {
        assert!(client.join().is_ok(), "a client thread panicked");
    }
    let acknowledged = acknowledged.lock().map(|a| a.clone()).unwrap_or_default();
    assert_eq!(acknowledged.len(), jobs.len(), "some jobs were never acknowledged");
    let distinct: HashSet<&String> = acknowledged.iter().collect();
    assert_eq!(distinct.len(), acknowledged.len(), "an Idempotency-Key retry created a second task");

    let cancelled: HashSet<String> = cancelled.lock().map(|c| c.iter().cloned().collect()).unwrap_or_default();
    let expected: Vec<String> = acknowledged.iter().filter(|id| !cancelled.contains(*id)).cloned().collect();

    // Every acknowledged task that was not cancelled must now run, without further requests;
    // the log is read once it is long enough (an entry too many is a duplicate, which the
    // check below reports).
    let timeout = Duration::from_secs(120 + 3 * scale.tasks_per_user as u64);
    wait_for_log(&redis, &hosts[0], expected.len(), timeout);
    let entries = read_log(&hosts[0]);
    // Nothing is queued any more, so no cancelled task can still turn up.
    assert_eq!(
        redis.query::<Option<i64>>(&["HGET", &app_key(word::METRICS), "queued"]),
        Some(0),
        "tasks are still queued"
    );
    let report = check::check(&entries, check::Rule::default(), Some(&expected));
    let ran_cancelled: Vec<&str> =
        entries.iter().filter_map(|e| e.task_id.as_deref()).filter(|id| cancelled.contains(*id)).collect();
    let mut waits = outage_503s.lock().map(|t| t.clone()).unwrap_or_default();
    println!(
        "chaos: {} users x {} tasks, {} kills incl. one Redis restart, {:.0} s; acknowledged={} cancelled={} logged={} 503s={} (slowest {:.0} ms); {}",
        scale.users,
        scale.tasks_per_user,
        scale.kills,
        started.elapsed().as_secs_f64(),
        acknowledged.len(),
        cancelled.len(),
        entries.len(),
        waits.len(),
        support::percentile_ms(&mut waits, 100.0),
        report.summary()
    );
    assert!(report.is_clean(), "{}", report.problems());
    assert!(ran_cancelled.is_empty(), "cancelled tasks ran: {ran_cancelled:?}");
    assert!(!cancelled.is_empty(), "no DELETE cancelled anything, so the run tested nothing of it");
}
