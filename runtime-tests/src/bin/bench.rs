//! The benchmark (SPEC §6): starts its own redis-server and `spin-host` replicas on loopback,
//! drives them, and prints a table.
//!
//! ```text
//! cargo build --target wasm32-wasip2 --release && cargo build -p runtime-tests --bins
//! target/debug/bench                 # every scenario at full size (several minutes)
//! target/debug/bench --smoke         # seconds; CI runs this
//! target/debug/bench --scenario admission --rates 500,1000,2000 --duration-s 10
//! ```
//!
//! Scenarios:
//! - `admission`: open loop (requests sent at a fixed rate whatever the answers do, latency
//!   measured from when each request was due, so queueing counts) over 1,000 users, on 1
//!   and 3 replicas.
//! - `hot`: 200 concurrent requests for one user spread over 3 replicas, with correct and
//!   with lossy compare-and-swap; the slots must be the exact SPEC schedule.
//! - `scale`: U users × T tasks submitted as fast as the replicas take them, then drained;
//!   the log is checked against the rule, lateness reported, Redis memory per queued task.

use runtime_tests::check::{self, Rule};
use runtime_tests::cluster::{Host, HostOptions, Redis, percentile_ms, read_log, require_wasm, try_post_task};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Options {
    smoke: bool,
    scenarios: Vec<String>,
    rates: Vec<u64>,
    duration: Duration,
    scale_users: usize,
    scale_tasks: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        smoke: false,
        scenarios: vec!["admission".into(), "hot".into(), "scale".into()],
        rates: vec![250, 500, 1_000, 2_000],
        duration: Duration::from_secs(5),
        scale_users: 10_000,
        scale_tasks: 25,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--smoke" => {
                options.smoke = true;
                options.rates = vec![100];
                options.duration = Duration::from_secs(1);
                options.scale_users = 20;
                options.scale_tasks = 3;
            }
            "--scenario" => options.scenarios = value("--scenario")?.split(',').map(str::to_string).collect(),
            "--rates" => {
                options.rates = value("--rates")?.split(',').map(|r| r.parse().map_err(|_| format!("bad rate {r:?}"))).collect::<Result<_, _>>()?
            }
            "--duration-s" => options.duration = Duration::from_secs(value("--duration-s")?.parse().map_err(|_| "bad --duration-s")?),
            "--scale-users" => options.scale_users = value("--scale-users")?.parse().map_err(|_| "bad --scale-users")?,
            "--scale-tasks" => options.scale_tasks = value("--scale-tasks")?.parse().map_err(|_| "bad --scale-tasks")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

/// One row of the table.
struct Row {
    scenario: String,
    offered: String,
    achieved_per_s: f64,
    latencies: Vec<Duration>,
    errors: usize,
    lateness: Option<check::Report>,
    note: String,
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    require_wasm();
    let mut rows = Vec::new();
    for scenario in &options.scenarios {
        match scenario.as_str() {
            "admission" => {
                for replicas in [1, 3] {
                    for &rate in &options.rates {
                        rows.push(admission(replicas, rate, options.duration));
                    }
                }
            }
            "hot" => {
                let concurrency = if options.smoke { 20 } else { 200 };
                rows.push(hot_user(concurrency, false));
                rows.push(hot_user(concurrency, true));
            }
            "scale" => rows.push(scale(options.scale_users, options.scale_tasks, options.smoke)),
            other => {
                eprintln!("bench: unknown scenario {other:?}");
                std::process::exit(2);
            }
        }
    }
    print_table(&rows);
    let broken = rows.iter().any(|r| r.lateness.as_ref().is_some_and(|l| !l.is_clean()));
    if broken {
        eprintln!("bench: the log broke the rule or lost/doubled tasks");
        std::process::exit(1);
    }
}

fn start_cluster(replicas: usize, lossy_cas: bool) -> (Redis, Vec<Host>) {
    let redis = Redis::start();
    let options = HostOptions { lossy_cas, ..HostOptions::default() };
    let hosts = (0..replicas).map(|_| Host::start(&redis, &options)).collect();
    (redis, hosts)
}

/// How a request's latency is measured.
#[derive(Clone, Copy)]
enum Clock {
    /// From the instant it was due (open loop: waiting for a free client counts).
    FromDue,
    /// From when a client sent it (closed loop).
    FromSend,
}

/// Sends `jobs` (due instant, replica address, user) from a pool of client threads; returns
/// each request's latency and the error count.
fn run_jobs(jobs: Vec<(Instant, String, String)>, workers: usize, clock: Clock) -> (Vec<Duration>, usize) {
    let (sender, receiver) = channel::<(Instant, String, String)>();
    let receiver = Arc::new(Mutex::new(receiver));
    let results = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (receiver, results) = (receiver.clone(), results.clone());
            std::thread::spawn(move || {
                loop {
                    let job = match receiver.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok((due, addr, user)) = job else { return };
                    let sent = Instant::now();
                    let ok = matches!(try_post_task(&addr, &user, None), Ok(r) if r.status == 200 || r.status == 202);
                    let latency = match clock {
                        Clock::FromDue => due.elapsed(),
                        Clock::FromSend => sent.elapsed(),
                    };
                    if let Ok(mut results) = results.lock() {
                        results.0.push(latency);
                        if !ok {
                            results.1 += 1;
                        }
                    }
                }
            })
        })
        .collect();
    for job in jobs {
        // Open loop: each request leaves at its due instant, whatever the earlier ones did.
        let wait = job.0.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        if sender.send(job).is_err() {
            break;
        }
    }
    drop(sender);
    for thread in threads {
        let _ = thread.join();
    }
    let results = results.lock().map(|r| (r.0.clone(), r.1)).unwrap_or_default();
    results
}

fn admission(replicas: usize, rate: u64, duration: Duration) -> Row {
    let (_redis, hosts) = start_cluster(replicas, false);
    let count = (rate as f64 * duration.as_secs_f64()) as usize;
    let start = Instant::now() + Duration::from_millis(200);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let jobs: Vec<_> = (0..count)
        .map(|i| (start + interval * i as u32, hosts[i % hosts.len()].addr.clone(), format!("user-{}", i % 1_000)))
        .collect();
    let (latencies, errors) = run_jobs(jobs, 128, Clock::FromDue);
    let elapsed = start.elapsed().as_secs_f64();
    Row {
        scenario: format!("admission, {replicas} replica(s)"),
        offered: format!("{rate} req/s x {} s", duration.as_secs()),
        achieved_per_s: latencies.len() as f64 / elapsed,
        latencies,
        errors,
        lateness: None,
        note: String::new(),
    }
}

fn hot_user(concurrency: usize, lossy_cas: bool) -> Row {
    let (_redis, hosts) = start_cluster(3, lossy_cas);
    let barrier = Arc::new(std::sync::Barrier::new(concurrency));
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|i| {
            let (barrier, addr) = (barrier.clone(), hosts[i % hosts.len()].addr.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let sent = Instant::now();
                let reply = try_post_task(&addr, "hot", None);
                (sent.elapsed(), reply.ok().filter(|r| r.status == 200 || r.status == 202).and_then(|r| r.json()["slot"].as_i64()))
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().filter_map(|t| t.join().ok()).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let mut slots: Vec<i64> = results.iter().filter_map(|(_, slot)| *slot).collect();
    slots.sort_unstable();
    // SPEC §1: near-simultaneous arrivals get 20 slots a second apart per minute.
    let exact = slots.first().is_some_and(|&first| {
        slots.iter().enumerate().all(|(k, &s)| {
            let k = k as i64;
            s == first + (k / 20) * 60_000 + (k % 20) * 1_000
        })
    });
    Row {
        scenario: format!("hot user, 3 replicas, {} CAS", if lossy_cas { "lossy" } else { "correct" }),
        offered: format!("{concurrency} concurrent"),
        achieved_per_s: results.len() as f64 / elapsed,
        latencies: results.iter().map(|(latency, _)| *latency).collect(),
        errors: results.len() - slots.len(),
        lateness: None,
        note: format!("slots exact: {}", if exact { "yes" } else { "NO" }),
    }
}

/// Average `MEMORY USAGE` per queued task over up to 100 queued users: their queue list and
/// each queued task's record (the `due` entry and the ledger are per user, not per task).
const MEMORY_PER_QUEUED_TASK: &str = r#"
local bytes, tasks = 0, 0
for _, m in ipairs(redis.call('ZRANGE', 'taskq:due', 0, 99)) do
  local q = 'taskq:q:' .. m
  bytes = bytes + (redis.call('MEMORY', 'USAGE', q) or 0)
  for _, e in ipairs(redis.call('LRANGE', q, 0, -1)) do
    local id = string.sub(e, string.find(e, ':', 1, true) + 1)
    bytes = bytes + (redis.call('MEMORY', 'USAGE', 'taskq:t:' .. id) or 0)
    tasks = tasks + 1
  end
end
if tasks == 0 then return '0' end
return tostring(math.floor(bytes / tasks))
"#;

fn scale(users: usize, tasks: usize, smoke: bool) -> Row {
    let (redis, hosts) = start_cluster(3, false);
    let started = Instant::now();
    // Round k submits every user's k-th task, so that each user's tasks queue up evenly.
    let jobs: Vec<_> = (0..users * tasks)
        .map(|i| (Instant::now(), hosts[i % hosts.len()].addr.clone(), format!("scale-{}", i % users)))
        .collect();
    let (latencies, errors) = run_jobs(jobs, 64, Clock::FromSend);
    let submit_s = started.elapsed().as_secs_f64();
    // Redis runs on this machine, so its clock is this clock.
    let submitted_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let queued: i64 = redis.cli(&["ZCARD", "taskq:due"]).trim().parse().unwrap_or(0);
    // Bytes Redis holds per queued task: the queue entries and task records of up to 100
    // queued users (MEMORY USAGE, sampled), divided by their tasks.
    let sample = redis.cli(&["EVAL", MEMORY_PER_QUEUED_TASK, "0"]);
    let per_task: f64 = sample.trim().parse().unwrap_or(0.0);
    let total = users * tasks - errors;
    let deadline = Instant::now() + Duration::from_secs(120 + tasks as u64 * 3);
    while redis.cli(&["XLEN", "task_log"]).trim().parse::<usize>().unwrap_or(0) < total && Instant::now() < deadline {
        hosts[0].wait_for_lines(usize::MAX, Duration::from_millis(500), |_| false);
    }
    let entries = read_log(&hosts[0]);
    let report = check::check(&entries, Rule::default(), None);
    // Lateness of the tasks due once the submission burst was over: the drainer alone,
    // without the load generator and admissions competing for the cores.
    let quiet: Vec<_> = entries.iter().filter(|e| e.slot.is_some_and(|s| s > submitted_at_ms)).cloned().collect();
    let quiet = check::check(&quiet, Rule::default(), None);
    let pct = |p| quiet.lateness_percentile(p).map_or("-".to_string(), |v| v.to_string());
    let own = |p| report.own_delay_percentile(p).map_or("-".to_string(), |v| v.to_string());
    let mut note = format!(
        "submitted in {submit_s:.1} s; {queued} users queued; ~{per_task:.0} B Redis memory per queued task; logged {}/{}; \
         lateness of the {} tasks due after submission ended p50/p99/max {}/{}/{} ms; \
         executor's own delay (lateness not inherited from a late predecessor) p50/p99/max {}/{}/{} ms",
        entries.len(),
        total,
        quiet.entries,
        pct(50.0),
        pct(99.0),
        pct(100.0),
        own(50.0),
        own(99.0),
        own(100.0)
    );
    if !smoke {
        // Per-user state (ledger, completion times, queue) expires a minute after the last task.
        hosts[0].wait_for_lines(usize::MAX, Duration::from_secs(65), |_| false);
        let state_keys: usize = ["taskq:ledger:*", "taskq:done:*", "taskq:q:*"]
            .iter()
            .map(|pattern| redis.cli(&["--scan", "--pattern", pattern]).lines().count())
            .sum();
        note.push_str(&format!("; per-user keys left after idling 65 s: {state_keys}"));
    }
    Row {
        scenario: format!("scale, 3 replicas, {users} users x {tasks} tasks"),
        offered: "as fast as taken (64 clients)".to_string(),
        achieved_per_s: latencies.len() as f64 / submit_s,
        latencies,
        errors,
        lateness: Some(report),
        note,
    }
}

fn print_table(rows: &[Row]) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    println!("machine: {cores} cores; replicas and load generator share them");
    println!();
    println!("| scenario | offered | achieved req/s | p50 ms | p90 ms | p99 ms | max ms | errors | lateness p50/p99/max ms | violations | notes |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let mut latencies = row.latencies.clone();
        let (lateness, violations) = match &row.lateness {
            Some(r) => (
                format!(
                    "{}/{}/{}",
                    r.lateness_percentile(50.0).unwrap_or(0),
                    r.lateness_percentile(99.0).unwrap_or(0),
                    r.lateness_percentile(100.0).unwrap_or(0)
                ),
                format!("{} (+{} dup, {} early)", r.violations.len(), r.duplicated.len(), r.early.len()),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
            row.scenario,
            row.offered,
            row.achieved_per_s,
            percentile_ms(&mut latencies, 50.0),
            percentile_ms(&mut latencies, 90.0),
            percentile_ms(&mut latencies, 99.0),
            percentile_ms(&mut latencies, 100.0),
            row.errors,
            lateness,
            violations,
            row.note
        );
    }
}
