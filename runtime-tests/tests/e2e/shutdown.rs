//! SIGINT and SIGTERM end `spin-host`, and `start.sh` with its Redis and runtime, cleanly: the
//! expected exit status, promptly, and nothing on stderr that looks like a panic or a
//! backtrace, with RUST_BACKTRACE=1 (a backtrace would show) and a queued task keeping the
//! Redis-triggered drainer busy when the signal comes.
//!
//! The processes are started here rather than through `Host`, which kills its replica on drop,
//! turns error backtraces off and reads stderr behind the test's back: these tests need the
//! exit itself and every byte of stderr up to it.

use crate::support::{Redis, free_loopback_port, host_binary, host_command, repo_root, require_wasm, try_post_task};
use runtime_tests::SHUTDOWN_GRACE;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// A process group under test: its leader, the address it serves, and its stderr, read to the
/// end in a thread. Dropping it kills the whole group, so a failing test leaves nothing behind.
struct Group {
    child: Child,
    addr: String,
    stderr: Receiver<String>,
}

impl Group {
    /// Starts `command` in a process group of its own (as a shell starts a foreground job) and
    /// waits until the host in it prints `Serving http://<addr>`.
    fn start(mut command: Command) -> Group {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // A backtrace, were one printed, must show in full.
            .env("RUST_BACKTRACE", "1")
            .env_remove("RUST_LIB_BACKTRACE");
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let (stderr_tx, stderr) = channel();
        if let Some(mut err) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                let _ = stderr_tx.send(text);
            });
        }
        let (lines_tx, lines) = channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if lines_tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut group = Group { child, addr: String::new(), stderr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Some(addr) = line.strip_prefix("Serving http://") {
                group.addr = addr.trim().to_string();
                // The rest of stdout (the task log lines) is drained so the pipe never fills.
                std::thread::spawn(move || lines.iter().for_each(drop));
                return group;
            }
        }
        let status = group.child.try_wait().ok().flatten();
        let stderr = group.stderr.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
        panic!("no `Serving http://` within 60 s (exit: {status:?})\nstderr:\n{stderr}");
    }

    /// Queues work: the first of a user's tasks runs at once, the next ones wait for their slots,
    /// which leaves the drainer leading (a Redis handler in a guest) for a second or more.
    fn queue_tasks(&self) {
        let mut queued = 0;
        for _ in 0..4 {
            let reply = try_post_task(&self.addr, "shutdown-user", None).unwrap_or_else(|e| panic!("POST: {e}"));
            assert!(reply.status < 300, "POST: {} {}", reply.status, reply.body);
            if reply.json()["status"] == "queued" {
                queued += 1;
            }
        }
        assert!(queued > 0, "no task was queued, so the drainer had nothing to do");
    }

    /// Sends `signal` to the leader, or with `whole_group` to every process in the group (what a
    /// terminal's Ctrl-C does), then waits for the leader to exit: its status, how long it took,
    /// and its stderr, read to the end (which also means every process that held it is gone).
    fn stop(&mut self, signal: &str, whole_group: bool) -> (ExitStatus, Duration, String) {
        let pid = self.child.id().to_string();
        let target = if whole_group { format!("-{pid}") } else { pid };
        let started = Instant::now();
        let sent = Command::new("kill").args([&format!("-{signal}"), "--", &target]).status();
        assert!(sent.as_ref().is_ok_and(|s| s.success()), "kill -{signal} {target}: {sent:?}");
        // Far longer than a clean stop takes; the timing is asserted by the caller.
        let deadline = started + SHUTDOWN_GRACE + Duration::from_secs(20);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                other => panic!("still running {:?} after SIG{signal} ({other:?})", started.elapsed()),
            }
        };
        let elapsed = started.elapsed();
        let stderr = self
            .stderr
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("stderr still open 10 s after exit: a process outlived the group's leader"));
        (status, elapsed, stderr)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        crate::support::signal_group(&self.child, "-KILL");
        let _ = self.child.wait();
    }
}

/// Nothing that says something panicked, printed a stack trace, or failed (a handler cut off
/// from Redis while stopping, say).
fn assert_quiet(stderr: &str) {
    let lower = stderr.to_lowercase();
    assert!(!lower.contains("panicked"), "stderr mentions a panic:\n{stderr}");
    assert!(!lower.contains("backtrace"), "stderr holds a backtrace:\n{stderr}");
    assert!(!lower.contains("failed"), "something failed while stopping:\n{stderr}");
}

fn host_stops_cleanly_on(signal: &str) {
    require_wasm();
    let redis = Redis::start();
    let config_dir = std::env::temp_dir().join(format!("task-api-shutdown-{}-{signal}", std::process::id()));
    let command = host_command(&redis, &config_dir);
    let mut host = Group::start(command);
    host.queue_tasks();

    let (status, elapsed, stderr) = host.stop(signal, false);
    let _ = std::fs::remove_dir_all(&config_dir);
    // 0, as `spin up` exits on Ctrl-C (main.rs).
    assert_eq!(status.code(), Some(0), "spin-host after SIG{signal}: {status}\nstderr:\n{stderr}");
    assert_quiet(&stderr);
    assert!(elapsed < SHUTDOWN_GRACE + Duration::from_secs(2), "spin-host took {elapsed:?} to stop\n{stderr}");
    assert!(TcpStream::connect(&host.addr).is_err(), "{} still accepts connections", host.addr);
}

#[test]
fn spin_host_stops_cleanly_on_sigint() {
    host_stops_cleanly_on("INT");
}

#[test]
fn spin_host_stops_cleanly_on_sigterm() {
    host_stops_cleanly_on("TERM");
}

/// `start.sh` with the Redis it starts itself (on a free port, its append-only file under
/// `.spin/`) and the host built for the tests; `whole_group` sends the signal as a terminal's
/// Ctrl-C does. Exits 128 + the signal's number, as a shell does, with Redis and the runtime
/// gone.
fn start_sh_stops_cleanly_on(signal: &str, whole_group: bool, expected_status: i32) {
    require_wasm();
    let port = free_loopback_port();
    let redis_port = free_loopback_port();
    let redis_dir = repo_root().join(format!(".spin/redis-{redis_port}"));
    // Through `env --default-signal=INT` (GNU coreutils): a test run started in the background
    // by a non-interactive shell inherits SIGINT ignored, and bash cannot trap a signal ignored
    // on entry; from a terminal, start.sh gets it at its default.
    let mut command = Command::new("env");
    command.current_dir(repo_root()).args([
        "--default-signal=INT",
        "bash",
        "runtime-tests/start.sh",
        "--skip-build",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--redis-url",
        &format!("redis://127.0.0.1:{redis_port}"),
        "--host-bin",
    ]);
    command.arg(host_binary());
    let mut script = Group::start(command);
    script.queue_tasks();

    let (status, elapsed, stderr) = script.stop(signal, whole_group);
    let _ = std::fs::remove_dir_all(&redis_dir);
    assert_eq!(status.code(), Some(expected_status), "start.sh after SIG{signal}: {status}\nstderr:\n{stderr}");
    assert_quiet(&stderr);
    assert!(!stderr.contains("starting it again"), "a supervisor restarted its child while stopping:\n{stderr}");
    assert!(elapsed < SHUTDOWN_GRACE + Duration::from_secs(3), "start.sh took {elapsed:?} to stop\n{stderr}");
    assert!(TcpStream::connect(("127.0.0.1", redis_port)).is_err(), "Redis still runs on {redis_port}\n{stderr}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the runtime still serves on {port}\n{stderr}");
}

#[test]
fn start_sh_stops_everything_on_ctrl_c() {
    start_sh_stops_cleanly_on("INT", true, 130);
}

#[test]
fn start_sh_stops_everything_on_sigterm() {
    start_sh_stops_cleanly_on("TERM", false, 143);
}
