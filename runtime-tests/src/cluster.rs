//! Real parts for the end-to-end tests and the benchmark: a `redis-server` on a free loopback
//! port, `spin-host` replicas running the built app from the repo's own spin.toml, an HTTP
//! client (ureq) and a raw HTTP/1.1 path for the tests that are about bytes. Processes are killed on drop; their output is kept so that a
//! failing test can show it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::check;

/// The workspace root (spin.toml lives there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Fails with a clear message when the component has not been built: the test command in the
/// README builds it first (a nested cargo build here would wait on cargo's own lock).
pub fn require_wasm() {
    let wasm = repo_root().join("target/wasm32-wasip2/release/task_api.wasm");
    assert!(wasm.exists(), "{} is missing: run `cargo build --target wasm32-wasip2 --release` first", wasm.display());
}

/// The do-nothing fixture's manifest (`runtime-tests/fixtures/noop`), after checking that its
/// `.wasm` was built (the same build command builds it, as a default workspace member).
pub fn noop_manifest() -> PathBuf {
    let wasm = repo_root().join("target/wasm32-wasip2/release/noop_fixture.wasm");
    assert!(wasm.exists(), "{} is missing: run `cargo build --target wasm32-wasip2 --release` first", wasm.display());
    repo_root().join("runtime-tests/fixtures/noop/spin.toml")
}

/// The outbound HTTP fixture's manifest (`runtime-tests/fixtures/outbound`), after checking
/// that its `.wasm` was built (by the same build command).
pub fn outbound_manifest() -> PathBuf {
    let wasm = repo_root().join("target/wasm32-wasip2/release/outbound_fixture.wasm");
    assert!(wasm.exists(), "{} is missing: run `cargo build --target wasm32-wasip2 --release` first", wasm.display());
    repo_root().join("runtime-tests/fixtures/outbound/spin.toml")
}

/// The `spin-host` binary built next to the running one (a test binary lives one level
/// down, in `deps/`).
pub fn host_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("spin-host")
}

/// The key prefix spin.toml gives by default (its `key_prefix` variable), as the host's own
/// loader resolves it for the hosts the tests start.
pub fn app_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let path = repo_root().join("spin.toml");
        let app = crate::manifest::load(&path, None, &Default::default())
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        app.components
            .get("api")
            .and_then(|api| api.variables.get("key_prefix"))
            .unwrap_or_else(|| panic!("{}: the api component has no key_prefix", path.display()))
            .clone()
    })
}

/// The key (or channel) `word` (`task_core::keys::word`) under the key prefix spin.toml gives
/// by default, as the hosts the tests start use it.
pub fn app_key(word: &str) -> String {
    format!("{}{word}", app_prefix())
}

/// A loopback port for a server that must be told its address before it starts: redis-server,
/// or a `start.sh` replica (which keeps its port across restarts of its host). `spin-host`
/// started here needs none: it binds port 0 and prints the address it got.
///
/// Why these cannot collide: the ports lie below the kernel's ephemeral range (32768–60999 on
/// Linux by default), so no socket the kernel numbers itself (a port-0 bind, an outgoing connection's
/// source port) ever holds one; a process-wide counter hands each port out once, so no two
/// tests of this binary (threads of one process) get the same; the counter starts at an
/// offset drawn from the process id, so two test processes side by side start far apart; and
/// a port that something holds anyway is skipped by a bind check. The one window left, another
/// process binding the port between the check and the server's own bind, is recovered where
/// the server is ours to restart: `Redis::start_with` tries again on the next port.
pub fn free_loopback_port() -> u16 {
    const FIRST: usize = 20_000;
    const COUNT: usize = 12_000;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let offset = std::process::id() as usize * 997;
    for _ in 0..COUNT {
        let port = (FIRST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT);
}

/// A private redis-server.
pub struct Redis {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    /// The connection `query` uses: opened on first use, and again after any error (the
    /// server may have been killed or restarted on purpose).
    conn: Mutex<Option<redis::Connection>>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(&[])
    }

    /// `extra` redis-server arguments, such as `["--appendonly", "yes"]`.
    pub fn start_with(extra: &[&str]) -> Redis {
        for _ in 0..5 {
            let port = free_loopback_port();
            let dir = std::env::temp_dir().join(format!("task-api-redis-{}-{port}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let child = Self::spawn(port, &dir, extra);
            let args = extra.iter().map(|a| a.to_string()).collect();
            let mut redis = Redis { child, port, dir, args, conn: Mutex::new(None) };
            if redis.wait_ready() {
                return redis;
            }
            // It exited: another process took the port after the check. Dropping cleans up.
        }
        panic!("redis-server exited at start five times (ports taken, or a bad argument in {extra:?})");
    }

    /// Kills the server at once (SIGKILL): what it had not persisted is gone.
    pub fn kill(&mut self) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and directory (an append-only file there is
    /// loaded back), and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = Self::spawn(self.port, &self.dir, &args);
        assert!(self.wait_ready(), "redis-server did not start again on port {}", self.port);
    }

    fn spawn(port: u16, dir: &Path, extra: &[&str]) -> Child {
        let port_text = port.to_string();
        let mut args = vec!["--port", &port_text, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        args.extend_from_slice(extra);
        Command::new("redis-server")
            .args(&args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"))
    }

    /// Waits until this server answers (true) or exits (false, as when its port was taken).
    /// The answer must name this server's process: a server of someone else's that holds the
    /// port must not pass for ours.
    fn wait_ready(&mut self) -> bool {
        let ours = format!("process_id:{}", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if self.try_query::<String>(&["INFO", "server"]).is_ok_and(|info| info.lines().any(|l| l.trim() == ours)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer within 10 s", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command, its reply converted to `T`; the test fails with the command and the error
    /// if Redis does not answer or answers something else.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_query(args).unwrap_or_else(|e| panic!("redis {}: {e}", args.join(" ")))
    }

    /// `query` for a server that may be down or paused on purpose: the error is returned.
    pub fn try_query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(self.connection()?),
        };
        let mut command = redis::Cmd::new();
        for arg in args {
            command.arg(*arg);
        }
        let reply = command.query(conn);
        if reply.is_err() {
            *slot = None;
        }
        reply
    }

    /// A connection of its own (as `MONITOR` needs), whose reads give up after 10 s.
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(conn)
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the server: Redis that cannot answer in time.
    pub fn signal(&self, signal: &str) {
        send_signal(&self.child, signal);
    }
}

/// Sends `child` `signal` as `kill` spells it (`-STOP`, `-CONT`).
fn send_signal(child: &Child, signal: &str) {
    let _ = Command::new("kill").args([signal, &child.id().to_string()]).stderr(Stdio::null()).status();
}

/// Sends `signal` to every process in the group `child` leads (started with `process_group(0)`).
pub fn signal_group(child: &Child, signal: &str) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args([signal, "--", &group]).stderr(Stdio::null()).status();
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Options for one host replica.
#[derive(Clone, Default)]
pub struct HostOptions {
    pub lossy_cas: bool,
    /// Extra `SPIN_VARIABLE_*` settings, as (name, value).
    pub variables: Vec<(String, String)>,
}

/// One `spin-host` replica serving the app.
pub struct Host {
    child: Child,
    pub addr: String,
    /// Every stderr line so far: the runtime's own and, as Spin 4.1 prints them, the
    /// components' output, stdout and stderr alike (trigger/src/cli/stdio.rs: a followed
    /// component's writes go to `stderr`), the app's seed-format log lines among them.
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// New stderr lines, as they come.
    lines: Mutex<Receiver<String>>,
    _config_dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The real Spin CLI the tests and the bench run instead of `spin-host`, when the environment
/// variable `TASK_API_SPIN` names its binary (docs/testing.md, "Under the real Spin"). `spin up`
/// takes the flags `spin-host` mirrors (`--from`, `--listen`, `--runtime-config-file`) and
/// prints the same `Serving http://<addr>` line, so a replica is started and found alike.
pub fn spin_cli() -> Option<PathBuf> {
    std::env::var_os("TASK_API_SPIN").filter(|s| !s.is_empty()).map(PathBuf::from)
}

/// The runtime the tests' replicas run: `spin-host`, or `spin up` (see `spin_cli`).
fn runtime() -> Command {
    match spin_cli() {
        Some(spin) => {
            let mut command = Command::new(spin);
            command.arg("up");
            command
        }
        None => Command::new(host_binary()),
    }
}

/// `spin-host` serving the app on a free port against `redis`, with a runtime config (the
/// key-value store on the same Redis) written into `config_dir`, which the caller removes.
/// (Always the bundled host: `Host::start` runs `spin up` instead under `TASK_API_SPIN`.)
pub fn host_command(redis: &Redis, config_dir: &Path) -> Command {
    app_command(Command::new(host_binary()), redis, config_dir)
}

/// `runtime` serving the app as `host_command` describes.
fn app_command(mut runtime: Command, redis: &Redis, config_dir: &Path) -> Command {
    let _ = std::fs::create_dir_all(config_dir);
    let runtime_config = config_dir.join("runtime-config.toml");
    let written = std::fs::write(
        &runtime_config,
        format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n", redis.url()),
    );
    assert!(written.is_ok(), "cannot write {}", runtime_config.display());
    runtime
        .current_dir(repo_root())
        .args(["--from", "spin.toml", "--listen", "127.0.0.1:0", "--runtime-config-file"])
        .arg(&runtime_config)
        .env("SPIN_VARIABLE_REDIS_ADDRESS", redis.url());
    runtime
}

impl Host {
    pub fn start(redis: &Redis, options: &HostOptions) -> Host {
        require_wasm();
        // A directory of its own per replica: the process id and a count within the process.
        static HOSTS: AtomicUsize = AtomicUsize::new(0);
        let n = HOSTS.fetch_add(1, Ordering::Relaxed);
        let config_dir = std::env::temp_dir().join(format!("task-api-host-{}-{n}", std::process::id()));
        let mut command = app_command(runtime(), redis, &config_dir);
        // A fault only the bundled host injects; under Spin the test runs on Spin's own
        // compare-and-swap (its key-value store on Redis), which is the real thing.
        if spin_cli().is_none() {
            command.args(["--kv-cas", if options.lossy_cas { "lossy" } else { "correct" }]);
        }
        for (name, value) in &options.variables {
            command.env(format!("SPIN_VARIABLE_{}", name.to_uppercase()), value);
        }
        Self::spawn(command, TempDir(config_dir))
    }

    /// A replica serving another app's manifest, such as `noop_manifest()`, without Redis.
    pub fn start_manifest(manifest: &Path) -> Host {
        Self::start_manifest_with(manifest, &[])
    }

    /// The same, with application variables set (as `SPIN_VARIABLE_<NAME>`).
    pub fn start_manifest_with(manifest: &Path, variables: &[(&str, &str)]) -> Host {
        let mut command = runtime();
        command.arg("--from").arg(manifest).args(["--listen", "127.0.0.1:0"]);
        for (name, value) in variables {
            command.env(format!("SPIN_VARIABLE_{}", name.to_uppercase()), value);
        }
        Self::spawn(command, TempDir(PathBuf::new()))
    }

    /// Runs `command` and waits until it reports its address.
    fn spawn(mut command: Command, config_dir: TempDir) -> Host {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        // No backtrace captured for every error value, as `spin up` runs where RUST_BACKTRACE
        // is unset: wasmtime makes errors in the course of ordinary requests, and with
        // RUST_BACKTRACE=1 inherited each one walked the stack (measured: ~5% of the host's
        // CPU at saturation). A panic still prints its backtrace.
        command.env("RUST_LIB_BACKTRACE", "0");
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (sender, lines) = channel();
        if let Some(err) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut all) = sink.lock() {
                        all.push(line.clone());
                    }
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        // Stdout says where the runtime serves (then only what else it says of itself).
        let (served, addr) = channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix("Serving http://") {
                        let _ = served.send(addr.trim().to_string());
                    }
                }
            });
        }
        let mut host = Host { child, addr: String::new(), stderr, lines: Mutex::new(lines), _config_dir: config_dir };
        match addr.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => host.addr = addr,
            Err(_) => panic!("{program} did not report its address within 60 s\nstderr:\n{}", host.stderr_text()),
        }
        host
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits until `count` stderr lines satisfying `pred` have arrived since start (bounded).
    pub fn wait_for_lines(&self, count: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.stderr.lock().map(|l| l.iter().filter(|s| pred(s)).count()).unwrap_or(0);
            if seen >= count {
                return seen;
            }
            let Ok(lines) = self.lines.lock() else { return seen };
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return seen,
            }
        }
    }

    /// Kills the replica at once (SIGKILL), every process of it.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends every process of the replica `signal` as `kill` spells it: `-STOP` pauses it (a
    /// replica too busy to run anything for a while), `-CONT` resumes it. A replica is a process
    /// group of its own: `spin up` runs each trigger type in a child process (`spin trigger
    /// http`, `spin trigger redis`: up.rs `start_trigger_processes`), which a signal to `spin
    /// up` alone would leave running, as a pod's or a unit's kill does not.
    pub fn signal(&self, signal: &str) {
        signal_group(&self.child, signal);
    }

    /// Whether the process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn post_task(&self, body: &str) -> Reply {
        request(&self.addr, "POST", "/api/v1/task", &[("Content-Type", "application/json")], body.as_bytes())
    }

    pub fn get(&self, path: &str) -> Reply {
        request(&self.addr, "GET", path, &[], b"")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub elapsed: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// The client for every request whose bytes on the wire are not the point. One connection per
/// request, closed by the server (`Connection: close`, nothing pooled): the tests kill replicas
/// between requests, and the benchmark's open-loop runs measure a fresh connection each time.
/// Statuses of 4xx and 5xx are answers to look at, not errors; no `Accept` or `User-Agent` is
/// added, so a request carries only the headers its test names.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(0)
            .accept("")
            .user_agent("")
            .allow_non_standard_methods(true)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    })
}

/// An HTTP/1.1 request over loopback; panics if there is no answer.
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    try_request(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// A request that may fail at the connection (the replica was killed).
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let started = Instant::now();
    let mut builder = ureq::http::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.header("Connection", "close").body(body).map_err(std::io::Error::other)?;
    let response = agent().run(request).map_err(std::io::Error::other)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let body = response.into_body().into_with_config().limit(MAX_BODY as u64).read_to_vec();
    let body = body.map_err(std::io::Error::other)?;
    Ok(Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned(), elapsed: started.elapsed() })
}

/// A POST of a task that may fail at the connection (the replica was killed).
pub fn try_post_task(addr: &str, user: &str, idempotency_key: Option<&str>) -> std::io::Result<Reply> {
    let body = serde_json::json!({ "user_id": user }).to_string();
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(key) = idempotency_key {
        headers.push(("Idempotency-Key", key));
    }
    try_request(addr, "POST", "/api/v1/task", &headers, body.as_bytes())
}

// The raw path, for what a client library would not send or would hide: malformed requests,
// header bytes that are not UTF-8, a body that never finishes, and keep-alive timing (how
// the server's bytes leave on one socket; also the benchmark's closed loop, as wrk sends).

/// The bytes of one request; without `close`, HTTP/1.1 keeps the connection open.
fn build_request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8], close: bool) -> Vec<u8> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if close {
        raw.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends raw bytes (a whole request, `Connection: close` included) and reads one response.
pub fn raw_request(addr: &str, bytes: &[u8]) -> Reply {
    let started = Instant::now();
    let answer = TcpStream::connect(addr).and_then(|stream| {
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut reader = BufReader::new(stream);
        reader.get_mut().write_all(bytes)?;
        read_response(&mut reader, false, started)
    });
    answer.unwrap_or_else(|e| panic!("raw request to {addr}: {e}"))
}

/// Most bytes a keep-alive response body may have before the client gives up on it.
const MAX_BODY: usize = 64 << 20;

/// One keep-alive HTTP/1.1 connection, as wrk or a browser holds it: requests one after
/// another on the same socket, each response read by its Content-Length or its chunked
/// framing.
pub struct KeepAlive {
    addr: String,
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn open(addr: &str) -> std::io::Result<KeepAlive> {
        let stream = TcpStream::connect(addr)?;
        // As wrk does: the client's writes never wait on Nagle, so a stall is the server's.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(KeepAlive { addr: addr.to_string(), reader: BufReader::new(stream) })
    }

    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Reply> {
        let started = Instant::now();
        self.reader.get_mut().write_all(&build_request(&self.addr, method, path, headers, body, false))?;
        read_response(&mut self.reader, method == "HEAD", started)
    }

    pub fn post_task(&mut self, user: &str) -> std::io::Result<Reply> {
        let body = serde_json::json!({ "user_id": user }).to_string();
        self.send("POST", "/api/v1/task", &[("Content-Type", "application/json")], body.as_bytes())
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Reply> {
        self.send("GET", path, &[], b"")
    }
}

fn invalid(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// One CRLF-terminated line, without its CRLF.
fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// One response (no body after a HEAD, a 204 or a 304), timed from `started`.
fn read_response(reader: &mut impl BufRead, head_only: bool, started: Instant) -> std::io::Result<Reply> {
    let (status, headers) = read_head(reader)?;
    let body = if head_only || status == 204 || status == 304 { Vec::new() } else { read_body(reader, &headers)? };
    Ok(Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned(), elapsed: started.elapsed() })
}

/// The status line and headers.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let status_line = read_line(reader)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            return Ok((status, headers));
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
}

/// The body, framed by `Transfer-Encoding: chunked`, by `Content-Length`, or else by the end
/// of the connection.
fn read_body(reader: &mut impl BufRead, headers: &[(String, String)]) -> std::io::Result<Vec<u8>> {
    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let line = read_line(reader)?;
            let size = line
                .split(';')
                .next()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| invalid(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !read_line(reader)?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(invalid("body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            read_line(reader)?;
        }
    }
    match header("content-length") {
        Some(length) => {
            let length: usize = length.parse().map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
            if length > MAX_BODY {
                return Err(invalid("body too large"));
            }
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.take(MAX_BODY as u64).read_to_end(&mut body)?;
        }
    }
    Ok(body)
}

/// The whole task log as NDJSON entries, read through the API (paged).
pub fn read_log(host: &Host) -> Vec<check::Entry> {
    read_log_at(&host.addr)
}

/// `read_log` for a server this module did not start (one under `runtime-tests/start.sh`).
pub fn read_log_at(addr: &str) -> Vec<check::Entry> {
    let mut entries = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(c) => format!("/api/v1/log?limit=1000&after={c}"),
            None => "/api/v1/log?limit=1000".to_string(),
        };
        let reply = request(addr, "GET", &path, &[("Accept", "application/x-ndjson")], b"");
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        let page: Vec<check::Entry> = reply.body.lines().filter_map(check::parse_line).collect();
        let done = page.len() < 1000;
        entries.extend(page);
        after = reply.header("next-cursor").map(str::to_string);
        if done || after.is_none() {
            return entries;
        }
    }
}

/// Waits until `done` holds, checking after 10 ms at first and every 200 ms at most (the checks
/// read Redis or the host's output, so they are cheap but not free); the test fails with
/// `what()` if it does not hold within `timeout`.
pub fn wait_until(timeout: Duration, what: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    while !done() {
        if Instant::now() >= deadline {
            panic!("not within {timeout:?}: {}", what());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Nearest-rank percentile of durations, in milliseconds.
pub fn percentile_ms(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil().max(1.0) as usize;
    samples[rank.min(samples.len()) - 1].as_secs_f64() * 1000.0
}

// For tests that time events on Redis's clock, the clock of `slot` and `completed_at`.

impl Redis {
    /// The server's clock (`TIME`) in epoch milliseconds; `None` while it does not answer.
    pub fn time_ms(&self) -> Option<i64> {
        let (secs, micros): (i64, i64) = self.try_query(&["TIME"]).ok()?;
        Some(secs * 1000 + micros / 1000)
    }

    /// Waits (up to 5 s) until the drainer lease is gone: its holder died and it lapsed.
    pub fn wait_for_the_lease_to_lapse(&self) {
        let lease = app_key(task_core::keys::word::LEASE);
        wait_until(
            Duration::from_secs(5),
            || "the dead leader's lease to lapse".into(),
            || !self.query::<bool>(&["EXISTS", &lease]),
        );
    }

    /// Waits (up to 10 s) until `count` Redis triggers listen to the drainers' tick. A replica
    /// serves HTTP some ms before its Redis trigger has subscribed, as under Spin (spin-host's
    /// main.rs `supervise`); a test of the steady state starts after that.
    pub fn wait_for_drainers(&self, count: usize) {
        let tick = app_key(task_core::keys::word::TICK);
        wait_until(
            Duration::from_secs(10),
            || format!("{count} drainers subscribed to {tick}"),
            || {
                let reply: Vec<redis::Value> = self.query(&["PUBSUB", "NUMSUB", &tick]);
                matches!(reply.get(1), Some(redis::Value::Int(n)) if *n as usize >= count)
            },
        );
    }

    /// How many entries the task log stream holds (0 while Redis does not answer).
    pub fn log_len(&self) -> usize {
        self.try_query(&["XLEN", "task_log"]).unwrap_or(0)
    }
}
