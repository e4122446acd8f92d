//! The page at `GET /`, as a person uses it: headless Chromium (Debian's `chromium`, driven
//! by `runtime-tests/browser/page.mjs` with playwright-core) opens it against a real
//! redis-server and the real app, configured with a second kind of task (`email`, 2 units per
//! 10 s). In the default lane it submits 5 tasks with a payload for one user, sees them queued
//! (payloads shown), cancels one with its button, sees the others completed one second apart
//! on the timeline and the cancelled one never run. Then it picks kind `email`, sees a task
//! costing more than the kind ever admits refused (422), submits one of 2 units (runs at once)
//! and two of 1 (wait for the 10 s window), and sees them in a lane of their own, drawn on
//! its 10 s window, until they run; both lanes are checked against `GET /api/v1/users/{id}`
//! and the log. A task of a pulled kind, claimed by a worker (the test's own requests), shows
//! in "Claimed by workers" with its attempt and deadline until its outcome is reported. It
//! saves a screenshot (to `docs/page.png`, the README's picture, with
//! `UPDATE_SCREENSHOT=1`).
//!
//! With `auth = api_key` (`runtime-tests/browser/page-auth.mjs`), a user's API key in the
//! "Token or key" field: the page shows the user's own view (the overview is the admin's),
//! takes the user from the key when the user id is left empty, lists the tasks it submitted
//! in "my tasks" (one run, one cancelled from there) and the user's lanes, and shows a bad
//! key's 401 detail.

use crate::support;

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::{Host, HostOptions, Redis, request};

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Runs `command` to its end (killed after `limit`), returning (success, stdout, stderr).
fn run(mut command: Command, limit: Duration) -> (bool, String, String) {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let pipe = |reader: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut reader) = reader {
                let _ = reader.read_to_string(&mut text);
            }
            text
        })
    };
    let out = pipe(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = pipe(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let mut stderr = err.join().unwrap_or_default();
    if status.is_none() {
        stderr.push_str(&format!("\n(killed after {} s)", limit.as_secs()));
    }
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

/// `npm ci` in runtime-tests/browser when its node_modules is missing.
fn install_playwright(browser_dir: &Path) {
    if browser_dir.join("node_modules/playwright-core/package.json").exists() {
        return;
    }
    let mut npm = Command::new("npm");
    npm.current_dir(browser_dir).args(["ci", "--no-audit", "--no-fund"]);
    let (ok, stdout, stderr) = run(npm, Duration::from_secs(300));
    assert!(
        ok,
        "`npm ci` in {} failed (Node.js and npm are needed: apt-get install -y nodejs npm)\nstdout:\n{stdout}\nstderr:\n{stderr}",
        browser_dir.display()
    );
}

/// One browser test at a time: each runs a host and Chromium, and the first one's timings
/// (tasks a second apart) should not compete with a second Chromium; `npm ci` runs once.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `runtime-tests/browser/<script>` in Node against `host` (its `BASE_URL`), with Chromium
/// and `env`, and returns what it printed; fails the test with everything said when it fails.
fn drive_browser(script: &str, host: &Host, env: &[(&str, OsString)]) -> String {
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "{} is missing: the browser test needs Debian's Chromium (`apt-get install -y chromium`), or set CHROMIUM to a Chromium binary",
        chromium.display()
    );
    let root = support::repo_root();
    let browser_dir = root.join("runtime-tests/browser");
    install_playwright(&browser_dir);
    let mut node = Command::new("node");
    node.current_dir(&root)
        .arg(browser_dir.join(script))
        .env("BASE_URL", format!("http://{}", host.addr))
        .env("CHROMIUM", &chromium);
    for (name, value) in env {
        node.env(name, value);
    }
    let (ok, stdout, stderr) = run(node, Duration::from_secs(150));
    assert!(
        ok,
        "the browser test {script} failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nhost stderr:\n{}",
        host.stderr_text()
    );
    stdout
}

/// The default kind as the default policy has it (1 per second, 20 per minute), `email`, and
/// `render`, which workers pull (the page shows its claims while a worker holds them).
const POLICIES: &str = r#"{"kinds": {"email": ["2/10s"], "render": {"windows": ["1/1s"], "pull": true}}}"#;
const USER: &str = "browser-user";

#[test]
fn the_page_shows_queued_tasks_completing_within_the_limits() {
    let _turn = one_at_a_time();
    let redis = Redis::start();
    let options = HostOptions { variables: vec![("policies".into(), POLICIES.into())], ..HostOptions::default() };
    let host = Host::start(&redis, &options);

    let page = host.get("/");
    assert_eq!(page.status, 200, "GET / answered {}: {}", page.status, page.body);
    let content_type = page.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "GET / has content-type {content_type:?}");
    assert!(
        page.body.contains("id=\"lanes\"") && page.body.contains("id=\"kind\""),
        "GET / is not the page:\n{}",
        page.body
    );

    // The README's picture is written only when asked for (UPDATE_SCREENSHOT=1), so that a
    // test run leaves the work tree as it found it.
    let dir = match std::env::var_os("UPDATE_SCREENSHOT") {
        Some(_) => support::repo_root().join("docs"),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    };
    let _ = std::fs::create_dir_all(&dir);
    let screenshot = dir.join("page.png");
    let _ = std::fs::remove_file(&screenshot);

    print!("{}", drive_browser("page.mjs", &host, &[("SCREENSHOT", screenshot.clone().into())]));

    // What the browser saw, once more from here: the user's two lanes, everything run.
    let state = host.get(&format!("/api/v1/users/{USER}"));
    assert_eq!(state.status, 200, "GET /api/v1/users/{USER} answered {}: {}", state.status, state.body);
    let state = state.json();
    for (kind, ran) in [("default", 4), ("email", 3)] {
        let lane = &state["kinds"][kind];
        let completions = lane["recent_completions"].as_array().map_or(0, Vec::len);
        assert!(
            lane["queued"] == 0 && completions == ran,
            "lane {kind} of {USER} should have run {ran} tasks and hold none: {lane}"
        );
    }

    let png = std::fs::read(&screenshot).unwrap_or_default();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG ({} bytes)", screenshot.display(), png.len());
}

const ADMIN_TOKEN: &str = "page-admin-t0ken";
/// One task per minute in the default lane, so that a second one waits long enough to be
/// cancelled from the page; `email` shows that every kind has its row.
const AUTH_POLICIES: &str = r#"{"kinds": {"default": ["1/60s"], "email": ["2/10s"]}}"#;
const KEY_USER: &str = "key-user";

#[test]
fn with_an_api_key_the_page_shows_the_users_own_tasks_and_lanes() {
    let _turn = one_at_a_time();
    let redis = Redis::start();
    let variables = [("auth", "api_key"), ("admin_token", ADMIN_TOKEN), ("policies", AUTH_POLICIES)];
    let variables = variables.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
    let options = HostOptions { variables, ..HostOptions::default() };
    let host = Host::start(&redis, &options);

    // The admin makes the user's key.
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let body = format!(r#"{{"user_id": "{KEY_USER}"}}"#);
    let headers = [("Authorization", admin.as_str()), ("Content-Type", "application/json")];
    let made = request(&host.addr, "POST", "/api/v1/keys", &headers, body.as_bytes());
    assert_eq!(made.status, 201, "POST /api/v1/keys answered {}: {}", made.status, made.body);
    let key = made.json()["key"].as_str().unwrap_or_else(|| panic!("no key in {}", made.body)).to_string();

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page-auth.png");
    let env = [("KEY", key.clone().into()), ("USER_ID", KEY_USER.into()), ("SCREENSHOT", screenshot.into())];
    print!("{}", drive_browser("page-auth.mjs", &host, &env));

    // What the page did, as the admin sees it: one task run, the other cancelled.
    let state = request(&host.addr, "GET", &format!("/api/v1/users/{KEY_USER}"), &[("Authorization", &admin)], b"");
    assert_eq!(state.status, 200, "GET /api/v1/users/{KEY_USER} answered {}: {}", state.status, state.body);
    let lane = &state.json()["kinds"]["default"];
    assert!(
        lane["queued"] == 0 && lane["recent_completions"].as_array().map_or(0, Vec::len) == 1,
        "the default lane of {KEY_USER} should have run 1 task and hold none: {lane}"
    );
}
