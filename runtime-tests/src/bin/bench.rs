//! The benchmark (the performance targets in docs/numbers.md): starts its own redis-server and `spin-host` replicas on loopback,
//! drives them, and prints a table. With `TASK_API_SPIN=<spin binary>` the replicas it starts
//! are `spin up` instead (every scenario, deliveries and pulls included; cluster.rs
//! `spin_cli`). With `--url` it drives an app that is already running instead (under `spin
//! up`, say), with `--redis` naming that app's Redis.
//!
//! ```text
//! cargo build --target wasm32-wasip2 --release && cargo build -p runtime-tests --bins
//! target/debug/bench                 # every scenario at full size (several minutes)
//! target/debug/bench --smoke         # every scenario small (~2-3 min, mostly starting hosts); CI runs this
//! target/debug/bench --scenario admission --rates 500,1000,2000 --duration-s 10
//! target/debug/bench --scenario saturation
//! # against `spin up` (the app on :3000, a do-nothing component on :3001, both on this Redis):
//! target/debug/bench --url 127.0.0.1:3000 --noop-url 127.0.0.1:3001 --redis redis://127.0.0.1:6379
//! ```
//!
//! Scenarios:
//! - `saturation`: closed loop, 32 keep-alive connections each sending its next request as
//!   soon as the last is answered, for the duration: first against the do-nothing fixture
//!   (`runtime-tests/fixtures/noop`), then against the app (POST /api/v1/task over 1,000
//!   rotating users) under the same host; prints both throughputs and **app ÷ do-nothing**;
//!   then (on replicas the bench starts) the app again under a three-window weighted policy
//!   (`WEIGHTED_POLICIES`: tasks of kind `weighted` costing 1–3 units).
//! - `admission`: open loop (requests sent at a fixed rate whatever the answers do, latency
//!   measured from when each request was due, so queueing counts) over 1,000 users, on 1
//!   and 3 replicas.
//! - `hot`: 200 concurrent requests for one user spread over 3 replicas, with correct and
//!   with lossy compare-and-swap; the slots must be the exact schedule of the rule.
//! - `memory`: Redis memory per queued task without a payload, with a small one and with the
//!   largest allowed (2 KiB).
//! - `keepalive`: one keep-alive connection, requests one after another, the app's routes
//!   taken in turn (a row each), then the do-nothing component's answer with Content-Length
//!   and the same answer chunked. A response whose body leaves after its head waits for the
//!   client's delayed ACK (~40 ms on Linux): the host, like Spin, sets no TCP_NODELAY. The
//!   notes count those answers; the chunked row shows the stall every time.
//! - `pull`: 1,000 users × 10 tasks of a kind workers pull (`"pull": true`, 1/s and 20/min),
//!   all at once and then as they come due, claimed by 8 worker loops (threads, each on a
//!   keep-alive connection to one of 3 replicas, long-polling `POST /api/v1/claims` for up to
//!   10 tasks and reporting each `completed` at once): claim lateness from the log (the
//!   claims' starts against their slots), duplicate claims, lapses, claims per second.
//! - `scale`: U users × T tasks submitted as fast as the replicas take them, then drained;
//!   the log is checked against the rule, lateness reported, Redis memory per queued task.
//!
//! With `--url` (one address, or several comma-separated replicas of one app), each scenario
//! runs once on those replicas, as they are configured, with user ids unique to the run;
//! `scale` needs `--redis` and the app's default `key_prefix`, and reads the log, so no
//! `admin_token`.

use runtime_tests::backend::{Backend, Recorded, window_breaks};
use runtime_tests::check::{self, Rule};
use runtime_tests::cluster::{
    Host, HostOptions, KeepAlive, Redis, app_key, noop_manifest, percentile_ms, read_log_at, require_wasm,
    try_post_task, try_request,
};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use task_core::keys::word;

/// Keep-alive connections of the saturation scenario (what the real Spin was measured with, docs/numbers.md).
const SATURATION_CONNECTIONS: usize = 32;
/// Users the saturation load rotates over.
const SATURATION_USERS: usize = 1_000;
/// The weighted saturation run's policy: a burst, a minute and an hour window, as gateways
/// stack them; at saturation its users queue, as the default policy's do.
const WEIGHTED_POLICIES: &str = r#"{"kinds": {"weighted": ["3/1s", "60/60s", "1000/1h"]}}"#;

struct Options {
    smoke: bool,
    scenarios: Vec<String>,
    rates: Vec<u64>,
    duration: Duration,
    scale_users: usize,
    scale_tasks: usize,
    /// An app already running: its replicas' addresses, its Redis, a do-nothing component.
    url: Vec<String>,
    redis: Option<String>,
    noop_url: Option<String>,
    /// Makes user ids unique to this run, for apps that keep state between runs.
    run: String,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        smoke: false,
        scenarios: ["saturation", "admission", "hot", "memory", "keepalive", "scale", "delivery", "pull"]
            .map(String::from)
            .to_vec(),
        rates: vec![250, 500, 1_000, 2_000],
        duration: Duration::from_secs(5),
        scale_users: 10_000,
        scale_tasks: 25,
        url: Vec::new(),
        redis: None,
        noop_url: None,
        run: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis().to_string())
            .unwrap_or_default(),
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
                options.rates = value("--rates")?
                    .split(',')
                    .map(|r| r.parse().map_err(|_| format!("bad rate {r:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--duration-s" => {
                options.duration = Duration::from_secs(value("--duration-s")?.parse().map_err(|_| "bad --duration-s")?)
            }
            "--scale-users" => {
                options.scale_users = value("--scale-users")?.parse().map_err(|_| "bad --scale-users")?
            }
            "--scale-tasks" => {
                options.scale_tasks = value("--scale-tasks")?.parse().map_err(|_| "bad --scale-tasks")?
            }
            "--url" => options.url = value("--url")?.split(',').map(|u| address(u).to_string()).collect(),
            "--redis" => options.redis = Some(value("--redis")?),
            "--noop-url" => options.noop_url = Some(address(&value("--noop-url")?).to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.url.is_empty() && (options.redis.is_some() || options.noop_url.is_some()) {
        return Err("--redis and --noop-url go with --url".to_string());
    }
    Ok(options)
}

/// `host:port` from `http://host:port/` or `host:port`.
fn address(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

/// One row of the table.
struct Row {
    scenario: String,
    offered: String,
    achieved_per_s: f64,
    latencies: Vec<Duration>,
    errors: usize,
    /// For runs whose tasks are waited for: what the log showed.
    log: Option<Logged>,
    note: String,
}

/// The tasks a run had acknowledged, and the check of the log they ran into.
struct Logged {
    submitted: usize,
    report: check::Report,
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    if options.url.is_empty() {
        require_wasm();
        // Every figure names the runtime it ran on.
        match runtime_tests::cluster::spin_cli() {
            Some(spin) => println!("runtime: spin up ({}, TASK_API_SPIN)", spin.display()),
            None => println!("runtime: the bundled host (spin-host)"),
        }
    }
    let mut rows = Vec::new();
    let mut ratio = None;
    for scenario in &options.scenarios {
        match scenario.as_str() {
            "saturation" => {
                let (noop, app, more) = saturation(&options);
                let more_rates: Vec<(String, f64)> =
                    more.iter().map(|r| (r.scenario.clone(), r.achieved_per_s)).collect();
                ratio = noop.as_ref().map(|noop| (app.achieved_per_s, noop.achieved_per_s, more_rates));
                rows.extend(noop);
                rows.push(app);
                rows.extend(more);
            }
            "admission" => {
                for replicas in replica_counts(&options, &[1, 3]) {
                    for &rate in &options.rates {
                        rows.push(admission(&options, replicas, rate));
                    }
                }
            }
            "hot" => {
                let concurrency = if options.smoke { 20 } else { 200 };
                let ledgers = if options.url.is_empty() && !options.smoke {
                    vec![Ledger::Redis, Ledger::Kv, Ledger::KvLossy]
                } else if options.url.is_empty() {
                    // Three replicas per ledger take most of a smoke run's time starting up;
                    // the lossy CAS is the harder of the two kv runs.
                    vec![Ledger::Redis, Ledger::KvLossy]
                } else {
                    vec![Ledger::Redis]
                };
                for ledger in ledgers {
                    rows.push(hot_user(&options, concurrency, ledger));
                }
            }
            "memory" => match memory(&options) {
                Ok(memory_rows) => rows.extend(memory_rows),
                Err(e) => {
                    eprintln!("bench: memory: {e}");
                    std::process::exit(2);
                }
            },
            "keepalive" => rows.extend(keep_alive(&options)),
            "delivery" => {
                if !options.url.is_empty() {
                    eprintln!("bench: delivery starts its own replicas and backend; it does not take --url");
                    std::process::exit(2);
                }
                // All at once (admission and deliveries share the cores), then each task sent
                // as its slot comes due (deliveries at their steady rate).
                for paced in [false, true] {
                    rows.push(delivery(&options, false, paced));
                    rows.push(delivery(&options, true, paced));
                }
            }
            "pull" => {
                if !options.url.is_empty() {
                    eprintln!("bench: pull starts its own replicas; it does not take --url");
                    std::process::exit(2);
                }
                for paced in [false, true] {
                    rows.push(pull(&options, paced));
                }
            }
            "scale" => match scale(&options) {
                Ok(row) => rows.push(row),
                Err(e) => {
                    eprintln!("bench: scale: {e}");
                    std::process::exit(2);
                }
            },
            other => {
                eprintln!("bench: unknown scenario {other:?}");
                std::process::exit(2);
            }
        }
    }
    print_table(&rows);
    if let Some((app, noop, more)) = ratio {
        println!();
        println!(
            "saturation: app {app:.0} req/s, do-nothing {noop:.0} req/s, app ÷ do-nothing = {:.3}",
            app / noop.max(1.0)
        );
        for (scenario, rate) in more {
            println!("{scenario}: {rate:.0} req/s, app ÷ do-nothing = {:.3}", rate / noop.max(1.0));
        }
    }
    let broken = rows.iter().any(|r| r.log.as_ref().is_some_and(|l| !l.report.is_clean()));
    if broken {
        eprintln!("bench: the log broke the rule or lost/doubled tasks");
        std::process::exit(1);
    }
}

/// Where the replicas the bench starts keep the ledger (the app's `ledger` variable), and
/// with which compare-and-swap for `kv`.
#[derive(Clone, Copy, PartialEq)]
enum Ledger {
    Redis,
    Kv,
    /// `kv` on the host's lossy CAS (answers at random, as Spin's cannot be trusted).
    KvLossy,
}

impl Ledger {
    fn label(self) -> &'static str {
        match (self, runtime_tests::cluster::spin_cli()) {
            (Ledger::Redis, _) => "redis ledger",
            (Ledger::Kv | Ledger::KvLossy, Some(_)) => "kv ledger, Spin's CAS",
            (Ledger::Kv, None) => "kv ledger, correct CAS",
            (Ledger::KvLossy, None) => "kv ledger, lossy CAS",
        }
    }
}

/// Where a scenario runs: replicas started for it (with their own Redis), or the app given by
/// `--url`.
struct Cluster {
    addrs: Vec<String>,
    redis_url: Option<String>,
    /// Dropped (killed) with the cluster.
    own: Option<(Redis, Vec<Host>)>,
}

impl Cluster {
    fn start(options: &Options, replicas: usize, ledger: Ledger) -> Cluster {
        Self::start_with(options, replicas, ledger, &[])
    }

    /// `start`, with more of the app's variables for the replicas the bench starts.
    fn start_with(options: &Options, replicas: usize, ledger: Ledger, more: &[(&str, &str)]) -> Cluster {
        if !options.url.is_empty() {
            return Cluster { addrs: options.url.clone(), redis_url: options.redis.clone(), own: None };
        }
        let redis = Redis::start();
        let mut variables =
            vec![("ledger".to_string(), if ledger == Ledger::Redis { "redis" } else { "kv" }.to_string())];
        variables.extend(more.iter().map(|(name, value)| (name.to_string(), value.to_string())));
        let host_options = HostOptions { lossy_cas: ledger == Ledger::KvLossy, variables };
        let hosts: Vec<Host> = (0..replicas).map(|_| Host::start(&redis, &host_options)).collect();
        Cluster {
            addrs: hosts.iter().map(|h| h.addr.clone()).collect(),
            redis_url: Some(redis.url()),
            own: Some((redis, hosts)),
        }
    }

    fn label(&self) -> String {
        let replicas = self.addrs.len();
        let given = if self.own.is_some() { "" } else { ", given by --url" };
        format!("{replicas} replica{}{given}", if replicas == 1 { "" } else { "s" })
    }
}

/// Replica counts to run: `own` when the bench starts them, else the one `--url` gives.
fn replica_counts(options: &Options, own: &[usize]) -> Vec<usize> {
    if options.url.is_empty() { own.to_vec() } else { vec![options.url.len()] }
}

/// One command through redis-cli against `url`; its raw output.
fn redis_cli(url: &str, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-u", url])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The do-nothing component's row (when one is known), the app's, and (on replicas the
/// bench starts) the app's under `WEIGHTED_POLICIES` and with each `auth` mode: closed loop
/// at saturation, the same load against each, each on a host of its own.
fn saturation(options: &Options) -> (Option<Row>, Row, Vec<Row>) {
    let duration = options.duration;
    let noop = match (&options.noop_url, options.url.is_empty()) {
        (Some(addr), _) => {
            Some(saturate("do-nothing component, given by --noop-url", addr, duration, options, plain_task()))
        }
        (None, true) => {
            let host = Host::start_manifest(&noop_manifest());
            Some(saturate("do-nothing component, 1 replica", &host.addr, duration, options, plain_task()))
        }
        (None, false) => None,
    };
    let ratio = |row: &mut Row| {
        if let Some(noop) = &noop {
            row.note = format!("app ÷ do-nothing = {:.3}", row.achieved_per_s / noop.achieved_per_s.max(1.0));
        }
    };
    let cluster = Cluster::start(options, 1, Ledger::Redis);
    let mut app = saturate(&format!("app, {}", cluster.label()), &cluster.addrs[0], duration, options, plain_task());
    ratio(&mut app);
    drop(cluster);
    let mut more = Vec::new();
    if options.url.is_empty() {
        let cluster = Cluster::start_with(options, 1, Ledger::Redis, &[("policies", WEIGHTED_POLICIES)]);
        let target = format!("app, three-window weighted policy, {}", cluster.label());
        more.push(saturate(&target, &cluster.addrs[0], duration, options, weighted_task()));
        drop(cluster);
        let cluster = Cluster::start_with(
            options,
            1,
            Ledger::Redis,
            &[("auth", "jwt"), ("jwt_hs256_secret", JWT_SECRET), ("admin_token", ADMIN_TOKEN)],
        );
        let target = format!("app, auth = jwt (HS256), {}", cluster.label());
        more.push(saturate(&target, &cluster.addrs[0], duration, options, jwt_task(&options.run)));
        drop(cluster);
        let cluster =
            Cluster::start_with(options, 1, Ledger::Redis, &[("auth", "api_key"), ("admin_token", ADMIN_TOKEN)]);
        let target = format!("app, auth = api_key, {}", cluster.label());
        match api_key_task(&cluster.addrs[0], &options.run) {
            Ok(task) => more.push(saturate(&target, &cluster.addrs[0], duration, options, task)),
            Err(e) => eprintln!("bench: auth = api_key: {e}"),
        }
    }
    more.iter_mut().for_each(ratio);
    (noop, app, more)
}

/// The admin token and HS256 secret of the bench's `auth` runs.
const ADMIN_TOKEN: &str = "bench-admin-token";
const JWT_SECRET: &str = "bench-secret-of-at-least-32-bytes";

/// The `n`-th saturation request of `user`, number `i`: its body, and its bearer credentials.
type TaskRequest = Arc<dyn Fn(&str, usize, usize) -> (String, Option<String>) + Send + Sync>;

fn saturation_user(run: &str, i: usize) -> String {
    format!("sat-{run}-{i}")
}

fn plain_task() -> TaskRequest {
    Arc::new(|user, _, _| (serde_json::json!({ "user_id": user }).to_string(), None))
}

/// A task of kind `weighted` (`WEIGHTED_POLICIES`) costing 1, 2 or 3 units.
fn weighted_task() -> TaskRequest {
    Arc::new(|user, _, n| {
        (serde_json::json!({ "user_id": user, "kind": "weighted", "cost": 1 + n % 3 }).to_string(), None)
    })
}

/// `auth = jwt`: each user sends their own HS256 token and no `user_id`.
fn jwt_task(run: &str) -> TaskRequest {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let Ok(key) = key else { return Arc::new(|_, _, _| ("{}".to_string(), None)) };
    let exp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() + 3_600).unwrap_or(0);
    let tokens: Vec<String> = (0..SATURATION_USERS)
        .map(|i| {
            let claims = serde_json::json!({ "sub": saturation_user(run, i), "exp": exp });
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap_or_default()
        })
        .collect();
    Arc::new(move |_, i, _| ("{}".to_string(), tokens.get(i).cloned()))
}

/// `auth = api_key`: a key made for each user through the admin API, then sent by that user.
fn api_key_task(addr: &str, run: &str) -> Result<TaskRequest, String> {
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let mut conn = KeepAlive::open(addr).map_err(|e| format!("connecting: {e}"))?;
    let keys = (0..SATURATION_USERS)
        .map(|i| {
            let body = serde_json::json!({ "user_id": saturation_user(run, i) }).to_string();
            let reply = conn.send(
                "POST",
                "/api/v1/keys",
                &[("Content-Type", "application/json"), ("Authorization", &admin)],
                body.as_bytes(),
            );
            match reply {
                Ok(reply) if reply.status == 201 => {
                    reply.json()["key"].as_str().map(str::to_string).ok_or("no key in the answer".to_string())
                }
                Ok(reply) => Err(format!("making a key: {} {}", reply.status, reply.body)),
                Err(e) => Err(format!("making a key: {e}")),
            }
        })
        .collect::<Result<Vec<String>, String>>()?;
    Ok(Arc::new(move |_, i, _| ("{}".to_string(), keys.get(i).cloned())))
}

/// `SATURATION_CONNECTIONS` keep-alive clients POST tasks (`body`) to `addr` back to back for
/// `duration`, rotating over `SATURATION_USERS` users.
fn saturate(target: &str, addr: &str, duration: Duration, options: &Options, task: TaskRequest) -> Row {
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let threads: Vec<_> = (0..SATURATION_CONNECTIONS)
        .map(|_| {
            let (sent, addr, run, task) = (sent.clone(), addr.to_string(), options.run.clone(), task.clone());
            std::thread::spawn(move || {
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                let mut conn = None;
                while Instant::now() < deadline {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    let i = n % SATURATION_USERS;
                    let (body, bearer) = task(&saturation_user(&run, i), i, n / SATURATION_USERS);
                    let authorization = bearer.map(|b| format!("Bearer {b}"));
                    let mut headers = vec![("Content-Type", "application/json")];
                    if let Some(authorization) = &authorization {
                        headers.push(("Authorization", authorization));
                    }
                    if conn.is_none() {
                        conn = KeepAlive::open(&addr).ok();
                    }
                    let Some(open) = conn.as_mut() else {
                        // Refused: the server is gone, and retrying would only spin.
                        errors += 1;
                        break;
                    };
                    let sent_at = Instant::now();
                    match open.send("POST", "/api/v1/task", &headers, body.as_bytes()) {
                        Ok(reply) if reply.status == 200 || reply.status == 202 => latencies.push(sent_at.elapsed()),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            conn = None;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for thread in threads {
        match thread.join() {
            Ok((l, e)) => {
                latencies.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    Row {
        scenario: format!("saturation, {target}"),
        offered: format!("closed loop, {SATURATION_CONNECTIONS} keep-alive connections x {} s", duration.as_secs()),
        achieved_per_s: latencies.len() as f64 / started.elapsed().as_secs_f64(),
        latencies,
        errors,
        log: None,
        note: String::new(),
    }
}

/// How a request's latency is measured.
#[derive(Clone, Copy)]
enum Clock {
    /// From the instant it was due (open loop: waiting for a free client counts).
    FromDue,
    /// From when a client sent it (closed loop).
    FromSend,
}

/// What `run_jobs` sent: every request's latency, the failed ones, and the ids of the tasks
/// acknowledged.
#[derive(Default)]
struct Sent {
    latencies: Vec<Duration>,
    errors: usize,
    task_ids: Vec<String>,
}

/// Sends `jobs` (due instant, replica address, user) from a pool of client threads.
fn run_jobs(jobs: Vec<(Instant, String, String)>, workers: usize, clock: Clock) -> Sent {
    let (sender, receiver) = channel::<(Instant, String, String)>();
    let receiver = Arc::new(Mutex::new(receiver));
    let results = Arc::new(Mutex::new(Sent::default()));
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
                    let task_id = match try_post_task(&addr, &user, None) {
                        Ok(r) if r.status == 200 || r.status == 202 => {
                            serde_json::from_str::<serde_json::Value>(&r.body)
                                .ok()
                                .and_then(|body| body["task_id"].as_str().map(str::to_string))
                        }
                        _ => None,
                    };
                    let latency = match clock {
                        Clock::FromDue => due.elapsed(),
                        Clock::FromSend => sent.elapsed(),
                    };
                    if let Ok(mut results) = results.lock() {
                        results.latencies.push(latency);
                        match task_id {
                            Some(id) => results.task_ids.push(id),
                            None => results.errors += 1,
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
    results.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default()
}

fn admission(options: &Options, replicas: usize, rate: u64) -> Row {
    let cluster = Cluster::start(options, replicas, Ledger::Redis);
    let duration = options.duration;
    let count = (rate as f64 * duration.as_secs_f64()) as usize;
    let start = Instant::now() + Duration::from_millis(200);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let jobs: Vec<_> = (0..count)
        .map(|i| {
            (
                start + interval * i as u32,
                cluster.addrs[i % cluster.addrs.len()].clone(),
                format!("user-{}-{}", options.run, i % 1_000),
            )
        })
        .collect();
    let Sent { latencies, errors, .. } = run_jobs(jobs, 128, Clock::FromDue);
    let elapsed = start.elapsed().as_secs_f64();
    Row {
        scenario: format!("admission, {}", cluster.label()),
        offered: format!("{rate} req/s x {} s", duration.as_secs()),
        achieved_per_s: latencies.len() as f64 / elapsed,
        latencies,
        errors,
        log: None,
        note: String::new(),
    }
}

fn hot_user(options: &Options, concurrency: usize, ledger: Ledger) -> Row {
    let cluster = Cluster::start(options, 3, ledger);
    let user = format!("hot-{}", options.run);
    let barrier = Arc::new(std::sync::Barrier::new(concurrency));
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|i| {
            let (barrier, addr, user) = (barrier.clone(), cluster.addrs[i % cluster.addrs.len()].clone(), user.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let sent = Instant::now();
                let reply = try_post_task(&addr, &user, None);
                (
                    sent.elapsed(),
                    reply.ok().filter(|r| r.status == 200 || r.status == 202).and_then(|r| r.json()["slot"].as_i64()),
                )
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().filter_map(|t| t.join().ok()).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let mut slots: Vec<i64> = results.iter().filter_map(|(_, slot)| *slot).collect();
    slots.sort_unstable();
    // The default rule: near-simultaneous arrivals get 20 slots a second apart per minute.
    let exact = slots.first().is_some_and(|&first| {
        slots.iter().enumerate().all(|(k, &s)| {
            let k = k as i64;
            s == first + (k / 20) * 60_000 + (k % 20) * 1_000
        })
    });
    Row {
        scenario: match cluster.own {
            Some(_) => format!("hot user, {}, {}", cluster.label(), ledger.label()),
            None => format!("hot user, {}", cluster.label()),
        },
        offered: format!("{concurrency} concurrent"),
        achieved_per_s: results.len() as f64 / elapsed,
        latencies: results.iter().map(|(latency, _)| *latency).collect(),
        errors: results.len() - slots.len(),
        log: None,
        note: format!("slots exact: {}", if exact { "yes" } else { "NO" }),
    }
}

/// Each attempt's own delay (ms): its start after the earliest its slot and its lane's earlier
/// starts allowed under `windows`. Lateness is inherited along a lane (a start that came late
/// moves the next one's earliest start as far), so this is what each claim added.
fn own_delays(entries: &[check::Entry], windows: &[(usize, f64)]) -> Vec<f64> {
    let mut lanes: std::collections::HashMap<(&str, &str), Vec<(i64, i64)>> = Default::default();
    for e in entries {
        if let (Some(slot), Some(start)) = (e.slot, e.started_at) {
            lanes.entry((&e.user_id, &e.kind)).or_default().push((start, slot));
        }
    }
    let mut delays = Vec::new();
    for mut starts in lanes.into_values() {
        starts.sort_unstable();
        for (n, &(start, slot)) in starts.iter().enumerate() {
            let earliest = windows
                .iter()
                .filter(|&&(quota, _)| n >= quota)
                .map(|&(quota, length)| starts[n - quota].0 + length as i64)
                .fold(slot, i64::max);
            delays.push((start - earliest) as f64);
        }
    }
    delays
}

/// The lateness (start − slot) of each lane's first start: what every later task of the
/// lane inherits, since the rule holds on the starts.
fn first_lateness(entries: &[check::Entry]) -> Vec<f64> {
    let mut first: std::collections::HashMap<(&str, &str), (i64, i64)> = Default::default();
    for e in entries {
        if let (Some(slot), Some(start)) = (e.slot, e.started_at) {
            let seen = first.entry((&e.user_id, &e.kind)).or_insert((start, slot));
            if start < seen.0 {
                *seen = (start, slot);
            }
        }
    }
    first.into_values().map(|(start, slot)| (start - slot) as f64).collect()
}

/// Requests per route in the keep-alive scenario (at 40 ms a stall, the chunked row's
/// 500 take 20 s).
const KEEPALIVE_REQUESTS: usize = 500;
/// An answer at least this slow on one keep-alive connection waited for a delayed ACK.
const STALL: Duration = Duration::from_millis(35);

/// One request the keep-alive scenario repeats: its row's label, what it sends (the body
/// made from the request's number) and the status that counts as answered.
struct Probe {
    label: String,
    method: &'static str,
    path: String,
    body: Box<dyn Fn(usize) -> String>,
    status: u16,
}

impl Probe {
    fn new(label: &str, method: &'static str, path: &str, status: u16) -> Probe {
        Probe { label: label.to_string(), method, path: path.to_string(), body: Box::new(|_| String::new()), status }
    }
}

/// Per-route rows on one keep-alive connection: the app's routes, then the do-nothing
/// component with Content-Length and chunked.
fn keep_alive(options: &Options) -> Vec<Row> {
    let requests = if options.smoke { 20 } else { KEEPALIVE_REQUESTS };
    let cluster = Cluster::start(options, 1, Ledger::Redis);
    let addr = &cluster.addrs[0];
    let run = options.run.clone();
    let task = try_post_task(addr, &format!("ka-{run}"), None)
        .ok()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        .and_then(|body| body["task_id"].as_str().map(str::to_string))
        .unwrap_or_default();
    let mut post = Probe::new("POST /api/v1/task", "POST", "/api/v1/task", 200);
    // A user per request: each task is admitted at once (200), none queues behind another.
    post.body = Box::new(move |i| serde_json::json!({ "user_id": format!("ka-{run}-{i}") }).to_string());
    let mut invalid = Probe::new("POST /api/v1/task with {} (400)", "POST", "/api/v1/task", 400);
    invalid.body = Box::new(|_| "{}".to_string());
    let probes = vec![
        post,
        Probe::new("GET /api/v1/task/{id}", "GET", &format!("/api/v1/task/{task}"), 200),
        Probe::new("GET /healthz", "GET", "/healthz", 200),
        Probe::new("GET /api/v1/nope (404)", "GET", "/api/v1/nope", 404),
        invalid,
    ];
    let mut rows = keep_alive_rows(&format!("app, {}", cluster.label()), addr, &probes, requests);
    drop(cluster);
    let noop = match (&options.noop_url, options.url.is_empty()) {
        (Some(addr), _) => Some((addr.clone(), None)),
        (None, true) => {
            let host = Host::start_manifest(&noop_manifest());
            Some((host.addr.clone(), Some(host)))
        }
        (None, false) => None,
    };
    if let Some((addr, _host)) = noop {
        let probes = vec![Probe::new("Content-Length", "GET", "/", 200), Probe::new("chunked", "GET", "/chunked", 200)];
        let mut noop_rows = keep_alive_rows("do-nothing component", &addr, &probes, requests);
        let p50 = |row: &Row| percentile_ms(&mut row.latencies.clone(), 50.0);
        if let [sized, chunked] = noop_rows.as_mut_slice() {
            chunked.note.push_str(&format!("; p50 chunked - Content-Length = {:.1} ms", p50(chunked) - p50(sized)));
        }
        rows.extend(noop_rows);
    }
    rows
}

/// `requests` rounds over `probes` on one keep-alive connection to `addr` (taken in turn, so
/// that a burst of load on the machine hits them alike): a row per probe.
fn keep_alive_rows(target: &str, addr: &str, probes: &[Probe], requests: usize) -> Vec<Row> {
    let mut samples: Vec<(Vec<Duration>, usize)> = probes.iter().map(|_| (Vec::new(), 0)).collect();
    let mut conn = None;
    for i in 0..requests {
        for (probe, (latencies, errors)) in probes.iter().zip(samples.iter_mut()) {
            if conn.is_none() {
                conn = KeepAlive::open(addr).ok();
            }
            let Some(open) = conn.as_mut() else {
                *errors += 1;
                continue;
            };
            let headers = [("Content-Type", "application/json")];
            match open.send(probe.method, &probe.path, &headers, (probe.body)(i).as_bytes()) {
                Ok(reply) if reply.status == probe.status => latencies.push(reply.elapsed),
                Ok(_) => *errors += 1,
                Err(_) => {
                    *errors += 1;
                    conn = None;
                }
            }
        }
    }
    probes
        .iter()
        .zip(samples)
        .map(|(probe, (latencies, errors))| {
            let stalled = latencies.iter().filter(|l| **l >= STALL).count();
            let busy: f64 = latencies.iter().map(Duration::as_secs_f64).sum();
            Row {
                scenario: format!("keep-alive, {target}, {}", probe.label),
                offered: format!("{requests} sequential on one connection"),
                // What one connection sustains on this route alone: 1 / mean latency.
                achieved_per_s: latencies.len() as f64 / busy.max(f64::MIN_POSITIVE),
                note: format!("{stalled} of {} answers took {} ms or more", latencies.len(), STALL.as_millis()),
                latencies,
                errors,
                log: None,
            }
        })
        .collect()
}

/// Average `MEMORY USAGE` per queued task of the users `ARGV[1] .. i` for i from `ARGV[2]` to
/// below `ARGV[3]` (ids that need no encoding in keys): their queue lists (`ARGV[4]` and the user)
/// and each queued task's record (`ARGV[5]` and its id). The `due` entry and the ledger are per
/// user, not per task.
const MEMORY_PER_QUEUED_TASK: &str = r#"
local bytes, tasks = 0, 0
for i = tonumber(ARGV[2]), tonumber(ARGV[3]) - 1 do
  local q = ARGV[4] .. ARGV[1] .. i
  bytes = bytes + (redis.call('MEMORY', 'USAGE', q) or 0)
  for _, e in ipairs(redis.call('LRANGE', q, 0, -1)) do
    local id = string.sub(e, string.find(e, ':', 1, true) + 1)
    bytes = bytes + (redis.call('MEMORY', 'USAGE', ARGV[5] .. id) or 0)
    tasks = tasks + 1
  end
end
if tasks == 0 then return '0' end
return tostring(math.floor(bytes / tasks))
"#;

/// Users submitted together in the scale scenario (see there).
const SCALE_GROUP: usize = 500;

fn scale(options: &Options) -> Result<Row, String> {
    let (users, tasks) = (options.scale_users, options.scale_tasks);
    let cluster = Cluster::start(options, 3, Ledger::Redis);
    let redis = cluster.redis_url.clone().ok_or("with --url, scale needs --redis")?;
    let drain_calls =
        || redis_cli(&redis, &["HGET", &app_key(word::METRICS), "drain_calls"]).trim().parse::<i64>().unwrap_or(0);
    let drain_calls_before = drain_calls();
    let xlen = || redis_cli(&redis, &["XLEN", "task_log"]).trim().parse::<usize>().unwrap_or(0);
    let logged_before = xlen();
    let prefix = format!("scale-{}-", options.run);
    let started = Instant::now();
    // Users go in groups of SCALE_GROUP; within a group, round k submits every user's k-th
    // task. A round of a group takes well under a second, so each user's tasks queue up and
    // the drainer runs most of them, however many users there are in all.
    let jobs: Vec<_> = (0..users)
        .step_by(SCALE_GROUP)
        .flat_map(|first| {
            let group = first..(first + SCALE_GROUP).min(users);
            (0..tasks).flat_map(move |_| group.clone())
        })
        .enumerate()
        .map(|(i, user)| (Instant::now(), cluster.addrs[i % cluster.addrs.len()].clone(), format!("{prefix}{user}")))
        .collect();
    let Sent { latencies, errors, task_ids } = run_jobs(jobs, 64, Clock::FromSend);
    let submit_s = started.elapsed().as_secs_f64();
    // Redis runs on this machine, so its clock is this clock.
    let submitted_at_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let queued: i64 = redis_cli(&redis, &["ZCARD", &app_key(word::DUE)]).trim().parse().unwrap_or(0);
    // Bytes Redis holds per queued task: the queue entries and task records of the last 100
    // users submitted (MEMORY USAGE, sampled), divided by their tasks still queued. (The
    // first users' backlogs may have run by now: on a slow day the submission outlasts them.)
    let per_task = memory_per_queued_task(&redis, &prefix, users.saturating_sub(100)..users);
    let total = task_ids.len();
    let deadline = Instant::now() + Duration::from_secs(120 + tasks as u64 * 3);
    let log =
        || read_log_at(&cluster.addrs[0]).into_iter().filter(|e| e.user_id.starts_with(&prefix)).collect::<Vec<_>>();
    // Polled: the log's length is cheap to watch, but other users' tasks grow it too on an
    // app given by --url, so the run's own entries are then counted as well.
    let entries = loop {
        if xlen() >= logged_before + total || Instant::now() >= deadline {
            let entries = log();
            if entries.len() >= total || Instant::now() >= deadline {
                break entries;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let drains_per_task = (drain_calls() - drain_calls_before) as f64 / entries.len().max(1) as f64;
    let report = check::check(&entries, Rule::default(), Some(&task_ids));
    // Lateness of the tasks due once the submission burst was over: the drainer alone,
    // without the load generator and admissions competing for the cores.
    let quiet: Vec<_> = entries.iter().filter(|e| e.slot.is_some_and(|s| s > submitted_at_ms)).cloned().collect();
    let quiet = check::check(&quiet, Rule::default(), None);
    let pct = |p| quiet.lateness_percentile(p).map_or("-".to_string(), |v| v.to_string());
    let own = |p| report.own_delay_percentile(p).map_or("-".to_string(), |v| v.to_string());
    let mut note = format!(
        "submitted in {submit_s:.1} s; {queued} users queued; ~{per_task:.0} B Redis memory per queued task; \
         lateness of the {} tasks due after submission ended p50/p99/max {}/{}/{} ms; \
         executor's own delay (lateness not inherited from a late predecessor) p50/p99/max {}/{}/{} ms; \
         drainer script calls per task {drains_per_task:.2}",
        quiet.entries,
        pct(50.0),
        pct(99.0),
        pct(100.0),
        own(50.0),
        own(99.0),
        own(100.0)
    );
    // On a Redis of its own (other users' keys would count too).
    if !options.smoke && cluster.own.is_some() {
        // Per-user state (ledger, completion times, queue) expires a minute after the last task.
        std::thread::sleep(Duration::from_secs(65));
        let state_keys: usize = [word::LEDGER, word::DONE, word::QUEUE]
            .iter()
            .map(|word| redis_cli(&redis, &["--scan", "--pattern", &app_key(&format!("{word}*"))]).lines().count())
            .sum();
        note.push_str(&format!("; per-user keys left after idling 65 s: {state_keys}"));
    }
    Ok(Row {
        scenario: format!("scale, {}, {users} users x {tasks} tasks", cluster.label()),
        offered: "as fast as taken (64 clients)".to_string(),
        achieved_per_s: latencies.len() as f64 / submit_s,
        latencies,
        errors,
        log: Some(Logged { submitted: total, report }),
        note,
    })
}

/// Users × tasks delivered to a backend answering in 100 ms (the `default` kind, 1/s and
/// 20/min, with a target), on 3 replicas; with `hanging`, 20 users of a second kind whose
/// backend never answers (timeout 2 s) submit tasks first. From the log: attempt-start
/// lateness, lost, doubled and violations on the claimed starts; from the backend's own
/// records: arrival after the claimed start, windows on the arrival times (0 and 5 ms of
/// tolerance), duplicate arrivals of one attempt, and deliveries per second.
fn delivery(options: &Options, hanging: bool, paced: bool) -> Row {
    let (users, tasks) = if options.smoke { (50, 3) } else { (1_000, 10) };
    let backend = Backend::start();
    let policies = format!(
        r#"{{"kinds": {{"default": {{"windows": ["1/1s", "20/60s"], "target": "{}"}},
            "stuck": {{"windows": ["1/1s"], "target": "{}", "timeout": "2s", "attempts": 2}}}}}}"#,
        backend.url("/slow/100"),
        backend.url("/hang")
    );
    let hosts = format!("http://{}", backend.addr());
    let cluster =
        Cluster::start_with(options, 3, Ledger::Redis, &[("policies", &policies), ("delivery_hosts", &hosts)]);
    let prefix =
        format!("delivery-{}-{}{}-", options.run, if hanging { "h" } else { "p" }, if paced { "r" } else { "" });
    if hanging {
        for u in 0..20 {
            let body = serde_json::json!({ "user_id": format!("stuck-{u}"), "kind": "stuck" }).to_string();
            let _ = try_request(
                &cluster.addrs[u % 3],
                "POST",
                "/api/v1/task",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            );
        }
    }
    let (Sent { latencies, errors, task_ids }, submit_s) = submit_all(&cluster, users, tasks, &prefix, paced);
    // (Redis's clock and ours are the same machine's.)
    let submitted_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let total = task_ids.len();
    let deadline = Instant::now() + Duration::from_secs(60 + tasks as u64 * 3);
    let ours = |r: &runtime_tests::backend::Recorded| r.path == "/slow/100";
    while backend.requests().iter().filter(|r| ours(r)).count() < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // The last answers' outcomes reach the log 100 ms later.
    let entries = loop {
        let entries: Vec<_> =
            read_log_at(&cluster.addrs[0]).into_iter().filter(|e| e.user_id.starts_with(&prefix)).collect();
        if entries.iter().filter(|e| e.ends_task()).count() >= total || Instant::now() >= deadline {
            break entries;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = check::check(&entries, Rule::default(), Some(&task_ids));
    let arrivals: Vec<_> = backend.requests().into_iter().filter(|r| ours(r)).collect();
    let started_at: std::collections::HashMap<(String, u32), i64> =
        entries.iter().filter_map(|e| Some(((e.task_id.clone()?, e.attempt?), e.started_at?))).collect();
    let mut lags = Vec::new();
    let mut per_attempt: std::collections::HashMap<(String, u32), usize> = std::collections::HashMap::new();
    for r in &arrivals {
        let Ok(envelope) = serde_json::from_slice::<serde_json::Value>(&r.body) else { continue };
        let id = envelope["task_id"].as_str().unwrap_or_default().to_string();
        let attempt = envelope["attempt"].as_u64().unwrap_or(0) as u32;
        if let Some(&start) = started_at.get(&(id.clone(), attempt)) {
            lags.push((start, r.at_ms - start as f64));
        }
        *per_attempt.entry((id, attempt)).or_insert(0) += 1;
    }
    let duplicate_arrivals = per_attempt.values().filter(|&&n| n > 1).count();
    // Connections the replicas opened to the backend: few when Spin's pool reuses them.
    let connections = arrivals.iter().map(|r| r.peer).collect::<std::collections::HashSet<_>>().len();
    let user = |r: &Recorded| {
        serde_json::from_slice::<serde_json::Value>(&r.body)
            .map_or_else(|_| String::new(), |e| e["user_id"].to_string())
    };
    let ours_arrived: Vec<&Recorded> = arrivals.iter().collect();
    let windows = [(1, 1_000.0), (20, 60_000.0)];
    let (strict, tolerant) = (
        window_breaks(&ours_arrived, &windows, 0.0, user).len(),
        window_breaks(&ours_arrived, &windows, 5.0, user).len(),
    );
    let lag_text = |lags: &mut Vec<f64>| {
        lags.sort_by(f64::total_cmp);
        let at = |p| check::percentile(lags, p).map_or("-".to_string(), |v: f64| format!("{v:.1}"));
        format!("{}/{}/{}", at(50.0), at(99.0), at(100.0))
    };
    let span_s =
        match (arrivals.iter().map(|r| r.at_ms).reduce(f64::min), arrivals.iter().map(|r| r.at_ms).reduce(f64::max)) {
            (Some(first), Some(last)) if last > first => (last - first) / 1_000.0,
            _ => f64::NAN,
        };
    let note = format!(
        "submitted in {submit_s:.1} s; lateness of each lane's first start p50/p99/max {} ms; claims' own delay \
         p50/p99/max {} ms; backend arrival after the claimed \
         start p50/p99/max {} ms, of attempts claimed after the last submission {} ms; arrivals breaking a window \
         at the backend: {strict} with 0 ms tolerance, {tolerant} with 5 ms; duplicate arrivals of one attempt: \
         {duplicate_arrivals}; {:.0} deliveries/s over {connections} connections",
        lag_text(&mut first_lateness(&entries)),
        lag_text(&mut own_delays(&entries, &windows)),
        lag_text(&mut lags.iter().map(|(_, lag)| *lag).collect()),
        lag_text(&mut lags.iter().filter(|(start, _)| *start > submitted_ms).map(|(_, lag)| *lag).collect()),
        arrivals.len() as f64 / span_s
    );
    let scenario = format!(
        "delivery, {}, {users} users x {tasks} tasks, 100 ms backend{}",
        cluster.label(),
        if hanging { ", another kind hanging" } else { "" },
    );
    submitted_row(scenario, users, paced, (latencies, errors, submit_s), Logged { submitted: total, report }, note)
}

/// Submits `users` × `tasks` (user ids `<prefix><n>`) from 64 clients spread over the
/// cluster's replicas: as fast as they are taken, or paced (each user's next task a second
/// after its last, as its slot comes due). What was sent, and how long it took (s).
fn submit_all(cluster: &Cluster, users: usize, tasks: usize, prefix: &str, paced: bool) -> (Sent, f64) {
    let started = Instant::now();
    let due = |i: usize| if paced { started + Duration::from_secs_f64(i as f64 / users as f64) } else { started };
    let replicas = cluster.addrs.len();
    let jobs: Vec<_> = (0..users * tasks)
        .map(|i| (due(i), cluster.addrs[i % replicas].clone(), format!("{prefix}{}", i % users)))
        .collect();
    let sent = run_jobs(jobs, 64, Clock::FromSend);
    (sent, started.elapsed().as_secs_f64())
}

/// The row of a run submitted by `submit_all`: its admissions (latencies, errors, seconds
/// taken) and its log.
fn submitted_row(
    scenario: String,
    users: usize,
    paced: bool,
    (latencies, errors, submit_s): (Vec<Duration>, usize, f64),
    log: Logged,
    note: String,
) -> Row {
    Row {
        scenario: format!("{scenario}{}", if paced { ", submitted as they come due" } else { "" }),
        offered: if paced { format!("{users}/s (64 clients)") } else { "as fast as taken (64 clients)".to_string() },
        achieved_per_s: latencies.len() as f64 / submit_s,
        latencies,
        errors,
        log: Some(log),
        note,
    }
}

/// One claim a worker loop got: (task id, attempt, started_at, slot).
type Claimed = (String, u64, i64, i64);

/// Users × tasks of a pulled kind (the `default` kind, 1/s and 20/min, `"pull": true`) on 3
/// replicas, claimed by worker loops that report each claim `completed` at once. The loops
/// long-poll from before the first task is submitted until every task has completed. From the
/// log: claim lateness (a claim is an attempt start), lost, doubled and violations on the
/// claimed starts; from the loops: duplicate claims of one attempt, claims per second, and
/// outcomes refused as stale (409: a claim that lapsed before its outcome).
fn pull(options: &Options, paced: bool) -> Row {
    let (users, tasks, loops) = if options.smoke { (50, 3, 2) } else { (1_000, 10, 8) };
    let policies = r#"{"kinds": {"default": {"windows": ["1/1s", "20/60s"], "pull": true}}}"#;
    let cluster = Cluster::start_with(options, 3, Ledger::Redis, &[("policies", policies)]);
    let prefix = format!("pull-{}-{}-", options.run, if paced { "r" } else { "a" });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let stale = Arc::new(AtomicUsize::new(0));
    let claimed: Arc<Mutex<Vec<Claimed>>> = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..loops)
        .map(|i| {
            let addr = cluster.addrs[i % 3].clone();
            let (stop, completed, stale, claimed) = (stop.clone(), completed.clone(), stale.clone(), claimed.clone());
            std::thread::spawn(move || worker_loop(&addr, &stop, &completed, &stale, &claimed))
        })
        .collect();
    let (Sent { latencies, errors, task_ids }, submit_s) = submit_all(&cluster, users, tasks, &prefix, paced);
    let total = task_ids.len();
    let deadline = Instant::now() + Duration::from_secs(60 + tasks as u64 * 3);
    while completed.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let entries: Vec<_> =
        read_log_at(&cluster.addrs[0]).into_iter().filter(|e| e.user_id.starts_with(&prefix)).collect();
    let report = check::check(&entries, Rule::default(), Some(&task_ids));
    let claimed = claimed.lock().map(|c| c.clone()).unwrap_or_default();
    let mut per_attempt: std::collections::HashMap<(&str, u64), usize> = std::collections::HashMap::new();
    for (id, attempt, _, _) in &claimed {
        *per_attempt.entry((id.as_str(), *attempt)).or_insert(0) += 1;
    }
    let duplicates = per_attempt.values().filter(|&&n| n > 1).count();
    let retried = claimed.iter().filter(|c| c.1 > 1).count();
    let lapsed = entries.iter().filter(|e| e.error.as_deref() == Some("lapsed")).count();
    let mut lateness: Vec<i64> = claimed.iter().filter(|c| c.1 == 1).map(|c| c.2 - c.3).collect();
    lateness.sort_unstable();
    let at = |p| check::percentile(&lateness, p).map_or("-".to_string(), |v: i64| v.to_string());
    let span_s = match (claimed.iter().map(|c| c.2).min(), claimed.iter().map(|c| c.2).max()) {
        (Some(first), Some(last)) if last > first => (last - first) as f64 / 1_000.0,
        _ => f64::NAN,
    };
    let mut own = own_delays(&entries, &[(1, 1_000.0), (20, 60_000.0)]);
    own.sort_by(f64::total_cmp);
    let own_at = |p| check::percentile(&own, p).map_or("-".to_string(), |v: f64| format!("{v:.0}"));
    let note = format!(
        "submitted in {submit_s:.1} s; {loops} worker loops; claim lateness (start - slot, first attempts) \
         p50/p99/max {}/{}/{} ms, the claims' own delay {}/{}/{} ms; duplicate claims of one attempt: {duplicates}; claims of a later attempt: \
         {retried}; lapsed: {lapsed}; stale outcomes (409): {}; {:.0} claims/s",
        at(50.0),
        at(99.0),
        at(100.0),
        own_at(50.0),
        own_at(99.0),
        own_at(100.0),
        stale.load(Ordering::Relaxed),
        claimed.len() as f64 / span_s
    );
    let scenario = format!("pull, {}, {users} users x {tasks} tasks, {loops} worker loops", cluster.label());
    submitted_row(scenario, users, paced, (latencies, errors, submit_s), Logged { submitted: total, report }, note)
}

/// One worker: claims up to 10 tasks (waiting up to 1 s for one), reports each `completed`,
/// until `stop`; a broken connection is opened again.
fn worker_loop(
    addr: &str,
    stop: &std::sync::atomic::AtomicBool,
    completed: &AtomicUsize,
    stale: &AtomicUsize,
    claimed: &Mutex<Vec<Claimed>>,
) {
    let json = [("Content-Type", "application/json")];
    let mut connection = None;
    while !stop.load(Ordering::Relaxed) {
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match KeepAlive::open(addr) {
                Ok(conn) => connection.insert(conn),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let Ok(reply) = conn.send("POST", "/api/v1/claims", &json, br#"{"kind":"default","max":10,"wait":"1s"}"#)
        else {
            connection = None;
            continue;
        };
        let claims = reply.json()["claims"].as_array().cloned().unwrap_or_default();
        for c in claims {
            let id = c["task_id"].as_str().unwrap_or_default().to_string();
            let attempt = c["attempt"].as_u64().unwrap_or(0);
            let (started, slot) = (c["started_at"].as_i64().unwrap_or(0), c["slot"].as_i64().unwrap_or(0));
            if let Ok(mut claimed) = claimed.lock() {
                claimed.push((id.clone(), attempt, started, slot));
            }
            let body = serde_json::json!({"claim": c["claim"], "result": "completed"}).to_string();
            match conn.send("POST", &format!("/api/v1/task/{id}/outcome"), &json, body.as_bytes()) {
                Ok(r) if r.status == 200 => {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) if r.status == 409 => {
                    stale.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
}

fn memory_per_queued_task(redis: &str, user_prefix: &str, users: std::ops::Range<usize>) -> f64 {
    let (first, end) = (users.start.to_string(), users.end.to_string());
    let (queue, task) = (app_key(word::QUEUE), app_key(word::TASK));
    redis_cli(redis, &["EVAL", MEMORY_PER_QUEUED_TASK, "0", user_prefix, &first, &end, &queue, &task])
        .trim()
        .parse()
        .unwrap_or(0.0)
}

/// Redis memory per queued task without a payload, with a typical small one, and with the
/// largest allowed (2048 bytes of JSON): U users × T tasks on one replica (the first task
/// of each user runs at once, the others queue), then `MEMORY USAGE` of their queues and
/// task records.
fn memory(options: &Options) -> Result<Vec<Row>, String> {
    let (users, tasks) = if options.smoke { (10, 3) } else { (200, 10) };
    let largest = format!("\"{}\"", "x".repeat(2_046));
    let variants = [None, Some(r#"{"job":"resize","image":"img-000123.png","width":640}"#.to_string()), Some(largest)];
    let mut rows = Vec::new();
    // One replica for the three: each variant has users of its own, and MEMORY USAGE is per key.
    let cluster = Cluster::start(options, 1, Ledger::Redis);
    let redis = cluster.redis_url.clone().ok_or("with --url, memory needs --redis")?;
    for (i, payload) in variants.into_iter().enumerate() {
        let size = payload.as_ref().map_or(0, String::len);
        let label = if size == 0 { "no payload".to_string() } else { format!("a {size} B payload") };
        let prefix = format!("mem-{}-{i}-", options.run);
        let (mut latencies, mut errors) = (Vec::new(), 0);
        let started = Instant::now();
        for _ in 0..tasks {
            for user in 0..users {
                let mut body = serde_json::json!({ "user_id": format!("{prefix}{user}") });
                if let Some(payload) = &payload {
                    body["payload"] = serde_json::from_str(payload).map_err(|e| e.to_string())?;
                }
                let headers = [("Content-Type", "application/json")];
                match try_request(&cluster.addrs[0], "POST", "/api/v1/task", &headers, body.to_string().as_bytes()) {
                    Ok(reply) if reply.status == 200 || reply.status == 202 => latencies.push(reply.elapsed),
                    _ => errors += 1,
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let per_task = memory_per_queued_task(&redis, &prefix, 0..users);
        rows.push(Row {
            scenario: format!("memory, {}, {users} users x {tasks} tasks, {label}", cluster.label()),
            offered: "one client, sequential".to_string(),
            achieved_per_s: latencies.len() as f64 / elapsed,
            latencies,
            errors,
            log: None,
            note: format!("~{per_task:.0} B Redis memory per queued task (queue entry and task record)"),
        });
    }
    Ok(rows)
}

/// The table, in Markdown: one row per run, one number per cell (`-` where a run has none),
/// so that a reader and `tests/e2e/bench_smoke.rs` can both read it.
fn print_table(rows: &[Row]) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    println!("machine: {cores} cores; replicas and load generator share them");
    println!();
    println!("{TABLE_HEADER}");
    println!("|{}", "---|".repeat(TABLE_HEADER.matches(" | ").count() + 1));
    for row in rows {
        let mut latencies = row.latencies.clone();
        let logged = match &row.log {
            Some(Logged { submitted, report }) => format!(
                "{submitted} | {} | {} | {} | {} | {} | {}/{}/{}",
                report.entries,
                report.missing.len(),
                report.duplicated.len(),
                report.violations.len(),
                report.early.len(),
                report.lateness_percentile(50.0).unwrap_or(0),
                report.lateness_percentile(99.0).unwrap_or(0),
                report.lateness_percentile(100.0).unwrap_or(0)
            ),
            None => ["-"; 7].join(" | "),
        };
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {logged} | {} |",
            row.scenario,
            row.offered,
            row.achieved_per_s,
            percentile_ms(&mut latencies, 50.0),
            percentile_ms(&mut latencies, 90.0),
            percentile_ms(&mut latencies, 99.0),
            percentile_ms(&mut latencies, 100.0),
            row.errors,
            row.note
        );
    }
}

/// The table's columns: "lost" are acknowledged tasks the log never showed, "doubled" tasks it
/// showed twice, "early" tasks run before their slot.
const TABLE_HEADER: &str = "| scenario | offered | achieved req/s | p50 ms | p90 ms | p99 ms | max ms | errors \
     | tasks submitted | tasks run | lost | doubled | violations | early | lateness p50/p99/max ms | notes |";
