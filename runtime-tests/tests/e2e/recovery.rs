//! Recovery (docs/failures.md): after Redis restarts, queued tasks resume with no request to wake them.
//!
//! Three replicas, each run by `runtime-tests/start.sh`, the supervisor a user runs: it
//! restarts the runtime whenever it exits and probes `GET /healthz` every second. A burst of
//! tasks over several users queues work for the next seconds; then Redis (append-only file,
//! `appendfsync always`) is SIGKILLed while tasks wait, every replica exits as Spin does when
//! its Redis subscription drops, and Redis is started again on the same port. From the kill
//! on, the test sends no HTTP request until every task has run: the supervisors' probes are
//! the only wake-up (Spin has no timer trigger). Redis runs without keyspace events in its
//! configuration, so the lease-expiry notification cannot do it either (the app's CONFIG SET
//! is lost with the restart). Checked: every acknowledged task ran exactly once, on the rule.
//! Printed, per outage: the time from Redis's return to the first resumed task, and the
//! lateness of the tasks that were due while Redis was down.
//!
//! Short by default (CI). The long run (100 users x 25 tasks, two 5 s outages):
//! `RECOVERY=full cargo test -p runtime-tests --test e2e recovery:: -- --nocapture`
//! The counterfactual, supervisors without the probe (`RECOVERY_PROBE_EVERY=0`), is expected
//! to fail: the tasks queued at the kill stay stranded.

use crate::support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use support::{Redis, check, free_loopback_port, host_binary, read_log_at, repo_root, require_wasm, try_post_task};

struct Scale {
    users: usize,
    tasks_per_user: usize,
    /// How long Redis stays down each time: long enough that tasks fall due meanwhile.
    outage: Duration,
    outages: usize,
}

impl Scale {
    fn from_env() -> Scale {
        match std::env::var("RECOVERY").as_deref() {
            Ok("full") => Scale { users: 100, tasks_per_user: 25, outage: Duration::from_secs(5), outages: 2 },
            _ => Scale { users: 8, tasks_per_user: 6, outage: Duration::from_secs(3), outages: 1 },
        }
    }
}

/// One output line of a supervisor, stamped when it arrived.
struct Line {
    at: Instant,
    replica: usize,
    stderr: bool,
    text: String,
}

/// Every supervisor's output, and a condition variable that wakes waiters on each new line.
#[derive(Default)]
struct Output {
    lines: Mutex<Vec<Line>>,
    arrived: Condvar,
}

impl Output {
    fn read_from(self: &Arc<Self>, stream: impl Read + Send + 'static, replica: usize, stderr: bool) {
        let output = self.clone();
        std::thread::spawn(move || {
            for text in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Ok(mut lines) = output.lines.lock() {
                    lines.push(Line { at: Instant::now(), replica, stderr, text });
                }
                output.arrived.notify_all();
            }
        });
    }

    /// Lines of `replica` matching `pred`.
    fn count(&self, replica: usize, pred: impl Fn(&Line) -> bool) -> usize {
        self.lines.lock().map(|l| l.iter().filter(|l| l.replica == replica && pred(l)).count()).unwrap_or(0)
    }

    /// Waits (bounded) until `done` holds over the lines; false on timeout.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&[Line]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let Ok(mut lines) = self.lines.lock() else { return false };
        loop {
            if done(&lines) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            lines = match self.arrived.wait_timeout(lines, left) {
                Ok((lines, _)) => lines,
                Err(_) => return false,
            };
        }
    }

    /// Waits for the next line of anyone, at most `timeout`.
    fn wait_any(&self, timeout: Duration) {
        let Ok(lines) = self.lines.lock() else { return };
        let seen = lines.len();
        let _ = self.arrived.wait_timeout_while(lines, timeout, |l| l.len() == seen);
    }

    /// The first instant after `since` at which `replica` printed a line matching `pred`.
    fn first_after(&self, replica: usize, since: Instant, pred: impl Fn(&Line) -> bool) -> Option<Instant> {
        let lines = self.lines.lock().ok()?;
        lines.iter().find(|l| l.replica == replica && l.at >= since && pred(l)).map(|l| l.at)
    }

    /// Everything every replica printed, for a failure message (stderr lines marked `!`).
    fn all_text(&self) -> String {
        let Ok(lines) = self.lines.lock() else { return String::new() };
        let replicas = lines.iter().map(|l| l.replica + 1).max().unwrap_or(0);
        (0..replicas)
            .map(|r| {
                let own: Vec<String> = lines
                    .iter()
                    .filter(|l| l.replica == r)
                    .map(|l| format!("{}{}", if l.stderr { "! " } else { "  " }, l.text))
                    .collect();
                format!("replica {r}:\n{}", own.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

fn is_serving(l: &Line) -> bool {
    !l.stderr && l.text.starts_with("Serving http://")
}
fn is_exit(l: &Line) -> bool {
    l.stderr && l.text.starts_with("start.sh: ") && l.text.contains(" exited (status ")
}
fn is_healthy_probe(l: &Line) -> bool {
    l.stderr && l.text == "start.sh: GET /healthz: 200"
}

/// `runtime-tests/start.sh` serving one replica, in its own process group so that the script,
/// its supervising subshells, the host and the probe's curl all go together.
struct Supervisor {
    child: Child,
    addr: String,
}

impl Supervisor {
    fn start(redis: &Redis, replica: usize, probe_every: &str, output: &Arc<Output>) -> Supervisor {
        use std::os::unix::process::CommandExt;
        let addr = format!("127.0.0.1:{}", free_loopback_port());
        let mut child = Command::new("bash")
            .current_dir(repo_root())
            .arg("runtime-tests/start.sh")
            .args([
                "--listen",
                &addr,
                "--redis-url",
                &redis.url(),
                "--skip-build",
                "--probe-every",
                probe_every,
                "--host-bin",
            ])
            .arg(host_binary())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run runtime-tests/start.sh: {e}"));
        if let Some(out) = child.stdout.take() {
            output.read_from(out, replica, false);
        }
        if let Some(err) = child.stderr.take() {
            output.read_from(err, replica, true);
        }
        Supervisor { child, addr }
    }

    fn signal_group(&self, signal: &str) {
        support::signal_group(&self.child, signal);
    }
}

impl Drop for Supervisor {
    /// SIGTERM to the group (the script stops its jobs and waits for them), then SIGKILL to
    /// whatever is left if the script has not exited within 15 s. The script is reaped only
    /// after that, so its process group id cannot have been reused by then.
    fn drop(&mut self) {
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        let exited = loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => break false,
            }
        };
        if !exited {
            self.signal_group("-KILL");
            let _ = self.child.wait();
        }
    }
}

/// One Redis outage, timed on Redis's clock (that of `slot` and `completed_at`) and on ours.
struct Outage {
    killed_ms: i64,
    back_ms: i64,
    back_at: Instant,
}

/// Waits (bounded) until the task log holds `count` entries, waking on any replica's output.
fn wait_for_log(redis: &Redis, output: &Output, count: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let len = redis.log_len();
        if len >= count || Instant::now() >= deadline {
            return len;
        }
        output.wait_any(Duration::from_millis(200));
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()).saturating_sub(1)).copied().unwrap_or(0)
}

#[test]
fn queued_tasks_resume_after_a_redis_restart_with_only_the_supervisors_probes() {
    require_wasm();
    assert!(host_binary().exists(), "{} is missing: cargo builds it with the tests", host_binary().display());
    let scale = Scale::from_env();
    let mut redis = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let output = Arc::new(Output::default());
    let probe_every = std::env::var("RECOVERY_PROBE_EVERY").unwrap_or_else(|_| "1".to_string());
    let probing = probe_every != "0";
    let supervisors: Vec<Supervisor> = (0..3).map(|i| Supervisor::start(&redis, i, &probe_every, &output)).collect();
    let replicas = supervisors.len();
    // Up means serving, and the supervisor's own probe has seen it healthy.
    let up = output.wait_until(Duration::from_secs(90), |lines| {
        (0..replicas).all(|r| {
            let seen = |pred: fn(&Line) -> bool| lines.iter().any(|l| l.replica == r && pred(l));
            seen(is_serving) && (!probing || seen(is_healthy_probe))
        })
    });
    assert!(up, "the supervised replicas did not come up:\n{}", output.all_text());

    // The burst: every user's tasks at once, round robin over the replicas.
    let addrs: Vec<String> = supervisors.iter().map(|s| s.addr.clone()).collect();
    let jobs: Vec<(usize, String)> = (0..scale.tasks_per_user)
        .flat_map(|_| (0..scale.users).map(|u| format!("recovery-user-{u}")))
        .enumerate()
        .collect();
    let clients: Vec<_> = jobs
        .chunks(jobs.len().div_ceil(4))
        .map(|chunk| {
            let (chunk, addrs) = (chunk.to_vec(), addrs.clone());
            std::thread::spawn(move || {
                chunk
                    .iter()
                    .map(|(i, user)| {
                        let addr = &addrs[i % addrs.len()];
                        match try_post_task(addr, user, None) {
                            Ok(reply) if reply.status == 200 || reply.status == 202 => {
                                Ok(reply.json()["task_id"].as_str().unwrap_or_default().to_string())
                            }
                            Ok(reply) => Err(format!("POST to {addr} for {user}: {} {}", reply.status, reply.body)),
                            Err(e) => Err(format!("POST to {addr} for {user}: {e}")),
                        }
                    })
                    .collect::<Result<Vec<String>, String>>()
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for client in clients {
        match client.join() {
            Ok(Ok(ids)) => acknowledged.extend(ids),
            Ok(Err(e)) => panic!("{e}\n{}", output.all_text()),
            Err(_) => panic!("a client thread panicked"),
        }
    }
    let total = scale.users * scale.tasks_per_user;
    assert_eq!(acknowledged.len(), total);

    let mut outages = Vec::new();
    let mut ran_at_kill = 0;
    for n in 0..scale.outages {
        // The first kill once the drainer is visibly at work (two rounds ran), so that tasks are
        // queued and fall due during the outage. A later one once the previous outage's
        // backlog has run (a task a second per user), so that the outages' delays do not add up.
        let wait_for = match n {
            0 => 2 * scale.users,
            _ => ran_at_kill + scale.users * (scale.outage.as_secs() as usize + 2),
        };
        let ran = wait_for_log(&redis, &output, wait_for, Duration::from_secs(60));
        ran_at_kill = ran;
        assert!(ran < total, "everything ran before outage {n}: make the burst longer");
        let exits_before: Vec<usize> = (0..replicas).map(|r| output.count(r, is_exit)).collect();
        let killed_ms = redis.time_ms().expect("Redis answers before the kill");
        let killed_at = Instant::now();
        redis.kill();
        // Every runtime exits, as Spin does when its Redis subscription drops.
        let exited = output.wait_until(Duration::from_secs(20), |lines| {
            (0..replicas).all(|r| lines.iter().filter(|l| l.replica == r && is_exit(l)).count() > exits_before[r])
        });
        assert!(exited, "a replica kept running without Redis:\n{}", output.all_text());
        // The outage is a span of time the scenario needs (tasks fall due meanwhile), not a
        // wait for an event.
        std::thread::sleep(scale.outage.saturating_sub(killed_at.elapsed()));
        redis.restart();
        let back_at = Instant::now();
        let back_ms = redis.time_ms().expect("Redis answers after the restart");
        outages.push(Outage { killed_ms, back_ms, back_at });
        // From here on the test sends no HTTP request until every task has run.
    }
    // A user's schedule spans about a second a task plus a minute per 20 tasks; the outages
    // push it back; the rest is slack for restarts on a loaded machine.
    let tasks = scale.tasks_per_user as u64;
    let schedule = Duration::from_secs(tasks + 60 * ((tasks - 1) / 20)) + scale.outage * scale.outages as u32;
    let done = wait_for_log(&redis, &output, total, schedule + Duration::from_secs(60));
    assert_eq!(
        done,
        total,
        "{} acknowledged tasks stranded after the Redis restart\n{}",
        total - done,
        output.all_text()
    );

    // Everything ran: reading the log over HTTP cannot wake anything any more.
    let entries = read_log_at(&supervisors[0].addr);
    let report = check::check(&entries, check::Rule::default(), Some(&acknowledged));
    println!(
        "recovery: {} users x {} tasks over {replicas} supervised replicas, {} Redis SIGKILL(s) of {:.0} s; acknowledged={} logged={}; {}",
        scale.users,
        scale.tasks_per_user,
        scale.outages,
        scale.outage.as_secs_f64(),
        acknowledged.len(),
        entries.len(),
        report.summary()
    );
    for (n, outage) in outages.iter().enumerate() {
        // Each replica's way back: runtime serving again, then its probe's first 200.
        let since = |pred: fn(&Line) -> bool| -> Vec<i64> {
            (0..replicas)
                .filter_map(|r| output.first_after(r, outage.back_at, pred))
                .map(|at| at.duration_since(outage.back_at).as_millis() as i64)
                .collect()
        };
        let (serving, probed) = (since(is_serving), since(is_healthy_probe));
        let next_kill = outages.get(n + 1).map_or(i64::MAX, |o| o.killed_ms);
        let resumed = entries.iter().map(|e| e.completed_at).filter(|&c| c >= outage.back_ms && c < next_kill).min();
        let mut due_in_outage: Vec<i64> = entries
            .iter()
            .filter_map(|e| e.slot.filter(|&s| s >= outage.killed_ms && s < outage.back_ms).map(|s| e.completed_at - s))
            .collect();
        due_in_outage.sort_unstable();
        // The rule holds on completion times, so a user's lateness carries over to its later
        // tasks (the rule holds on completion times): what this outage added is the lateness beyond what the user's last
        // task before the kill already had.
        let carried = |user: &str| -> i64 {
            entries
                .iter()
                .filter(|e| e.user_id == user && e.completed_at < outage.killed_ms)
                .max_by_key(|e| e.completed_at)
                .and_then(|e| e.slot.map(|s| e.completed_at - s))
                .unwrap_or(0)
        };
        let mut added: Vec<i64> = entries
            .iter()
            .filter_map(|e| {
                let slot = e.slot.filter(|&s| s >= outage.killed_ms && s < outage.back_ms)?;
                Some(e.completed_at - slot - carried(&e.user_id))
            })
            .collect();
        added.sort_unstable();
        let resume_ms = resumed.map(|c| c - outage.back_ms);
        println!(
            "outage {n}: Redis down {} ms; runtimes serving again after {:?} ms, first healthy probe after {:?} ms; \
             first resumed task {} ms after Redis's return; {} tasks due during the outage ran late by p50 {} ms, max {} ms \
             (added by this outage: p50 {} ms, max {} ms)",
            outage.back_ms - outage.killed_ms,
            serving,
            probed,
            resume_ms.map_or("-".to_string(), |v| v.to_string()),
            due_in_outage.len(),
            percentile(&due_in_outage, 50.0),
            percentile(&due_in_outage, 100.0),
            percentile(&added, 50.0),
            percentile(&added, 100.0),
        );
        assert!(
            !due_in_outage.is_empty(),
            "outage {n}: no task fell due while Redis was down; the scenario tests nothing"
        );
        // Generous for a loaded 2-core machine: a restart compiles the component, then the
        // next probe (1 s) wakes the drainer; a stranded queue would never resume at all.
        assert!(resume_ms.is_some_and(|ms| ms < 30_000), "outage {n}: draining resumed after {resume_ms:?} ms");
    }
    assert!(report.is_clean(), "{}", report.problems());
    assert_eq!(entries.len(), total);
}
