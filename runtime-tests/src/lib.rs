//! A small stand-in for `spin up`: runs a Spin app's components (built for `wasm32-wasip2`
//! with spin-sdk 7) on wasmtime 47, against real Redis, the way Spin 4.1 does where the app
//! can tell the difference. Used by the end-to-end tests and as a local runner for people
//! without the Spin CLI.
//!
//! # Layout
//! - `manifest`: the part of `spin.toml` and the runtime-config file the host reads.
//! - `host`: the `bindgen!` world, the per-instance state, and one file per interface:
//!   `redis` (outbound Redis: a new connection per open), `key_value` (wasi:keyvalue store +
//!   atomics on Redis's WATCH/MULTI/EXEC, a connection per CAS handle, correct or lossy
//!   answers), `variables` (spin:variables), `outbound_http` (wasi:http requests: allowed
//!   hosts, one pooled client for the process, Spin's 600 s default timeouts and its error
//!   codes). Each mirrors the Spin file it names, costs included: no other timeouts, as in Spin.
//! - `trigger::engine`: wasmtime configured as Spin's core configures it (epoch interruption
//!   with a 10 ms ticker, the pooling allocator where the address space allows, a store
//!   limiter and a guest-time call hook on every store); `spin-host` also installs Spin's
//!   tracing subscriber (main.rs), which is what makes the host cost what Spin costs.
//! - `trigger::http`: serves `wasi:http/handler` over hyper as Spin does: no TCP_NODELAY,
//!   the response body streamed, instances reused (128 requests, 16 at once, 1 s idle).
//! - `trigger::redis`: subscribes to the manifest's channels; one message at a time per
//!   address, a fresh instance each; exits when the subscription drops, as Spin does.
//! - `run` (here) runs one `Trigger` of the app; `spin-host` (main.rs) starts itself once
//!   per trigger type, as `spin up` starts `spin trigger http` and `spin trigger redis`.
//! - `Shutdown` (here): on SIGINT/SIGTERM the host stops accepting and taking messages, lets
//!   what runs finish (at most `SHUTDOWN_GRACE`), and exits 0, as `spin up` does on Ctrl-C.
//! - `backend`: a recording HTTP backend for the delivery tests and the bench.
//! - `allowed_hosts`: `allowed_outbound_hosts` parsed and checked as Spin does (outbound
//!   Redis and HTTP).
//! - `check`: the schedule rule's log checker shared by the `check_log` binary and the tests.
//! - `cluster`: redis-server and host processes plus HTTP clients (one request per
//!   connection, or keep-alive), for tests and bench.

pub mod allowed_hosts;
pub mod backend;
pub mod check;
pub mod cluster;
pub mod host;
pub mod manifest;
pub mod trigger;

use anyhow::Context;
use host::key_value::{Backend, CasMode};
use manifest::StoreBackend;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{OnceCell, mpsc, watch};

/// What `spin-host` was asked to run.
pub struct HostConfig {
    pub manifest: PathBuf,
    pub runtime_config: Option<PathBuf>,
    /// Variable values from the command line and `SPIN_VARIABLE_*`, command line first.
    pub variables: HashMap<String, String>,
    pub cas_mode: CasMode,
    /// Wasmtime's pooling allocator where the system allows it, as `spin up` does unless
    /// given `--disable-pooling`.
    pub pooling: bool,
    /// Wasmtime's compilation cache (`~/.cache/wasmtime`), as `spin up` keeps it unless given
    /// `--disable-cache` (trigger/src/cli.rs): a component compiled once starts in ms after.
    pub cache: bool,
    /// How long the host waits at shutdown for what is running (`SHUTDOWN_GRACE` unless
    /// SPIN_HOST_SHUTDOWN_GRACE_MS says otherwise).
    pub shutdown_grace: Duration,
    /// Where components' output is logged (`--log-dir`, `SPIN_LOG_DIR`; by default
    /// `.spin/logs` beside the manifest, as `spin up` keeps it); `None`: not logged to disk.
    pub log_dir: Option<PathBuf>,
}

/// Process-wide services shared by every instance: the key-value stores and the outbound
/// HTTP client pool. (Outbound Redis connections belong to the instance that opened them, as
/// in Spin.)
pub struct Services {
    pub cas_mode: CasMode,
    pub http: host::outbound_http::HttpClients,
    /// Where each instance logs its component's output (`host::stdio`).
    pub log_dir: Option<PathBuf>,
    stores: HashMap<String, Store>,
}

enum Store {
    /// One shared connection per store, opened on first use (key-value-redis store.rs
    /// `KeyValueRedis::get`: a `OnceCell`, `get_connection_manager` with its defaults, so
    /// no timeouts).
    Redis {
        client: redis::Client,
        shared: OnceCell<ConnectionManager>,
    },
    Memory(Arc<Mutex<HashMap<String, Vec<u8>>>>),
}

impl Services {
    fn new(
        cas_mode: CasMode,
        backends: &HashMap<String, StoreBackend>,
        log_dir: Option<PathBuf>,
    ) -> anyhow::Result<Services> {
        let mut stores = HashMap::new();
        for (label, backend) in backends {
            let store = match backend {
                StoreBackend::Redis { url } => Store::Redis {
                    client: redis::Client::open(url.as_str())
                        .with_context(|| format!("key-value store {label:?}: invalid Redis URL"))?,
                    shared: OnceCell::new(),
                },
                StoreBackend::Memory => Store::Memory(Default::default()),
            };
            stores.insert(label.clone(), store);
        }
        Ok(Services { cas_mode, http: Default::default(), log_dir, stores })
    }

    /// The backend of the key-value store `label`.
    pub async fn store(&self, label: &str) -> Result<Backend, host::wasi::keyvalue::store::Error> {
        use host::wasi::keyvalue::store::Error;
        match self.stores.get(label) {
            None => Err(Error::NoSuchStore),
            Some(Store::Redis { client, shared }) => {
                let shared = shared
                    .get_or_try_init(|| client.get_connection_manager())
                    .await
                    .map_err(|e| Error::Other(e.to_string()))?;
                Ok(Backend::Redis { client: client.clone(), shared: shared.clone() })
            }
            Some(Store::Memory(map)) => Ok(Backend::Memory(map.clone())),
        }
    }
}

/// How long open connections, requests in flight and Redis handlers get to finish after the
/// stop signal before the process exits anyway, by default. A drainer that leads hands over within two
/// 1 s windows; one cut short leaves its lease to expire (1 s) and another replica takes over.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What every part of the host sees of a shutdown: whether it has begun, and a way to say
/// "the process must wait for me" (`working`).
#[derive(Clone)]
pub struct Shutdown {
    stopping: watch::Receiver<bool>,
    /// Weak, so that only live work, not this handle, keeps `run` waiting.
    work: mpsc::WeakSender<()>,
}

/// Held by work the process waits for before it exits (a connection, an instance, a Redis
/// listener); dropping it says the work is done.
pub struct Working {
    _held: mpsc::Sender<()>,
}

impl Shutdown {
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once the host is stopping (owned, so a `'static` task can hold it).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            // An error means the sender is gone, which only happens once `run` has returned.
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    }

    /// A token to hold while working; `None` once `run` no longer waits for anything.
    pub fn working(&self) -> Option<Working> {
        self.work.upgrade().map(|held| Working { _held: held })
    }
}

/// The app's trigger types, as `spin up` starts a process for each (`spin trigger http`,
/// `spin trigger redis`: up.rs `start_trigger_processes`); `spin-host` does the same (main.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerType {
    Http,
    Redis,
}

impl TriggerType {
    pub fn name(self) -> &'static str {
        match self {
            TriggerType::Http => "http",
            TriggerType::Redis => "redis",
        }
    }

    /// The trigger types `app` has, HTTP first.
    pub fn of(app: &manifest::App) -> Vec<TriggerType> {
        let http = (!app.http_routes.is_empty()).then_some(TriggerType::Http);
        let redis = (!app.redis_triggers.is_empty()).then_some(TriggerType::Redis);
        http.into_iter().chain(redis).collect()
    }
}

/// What one `spin-host --trigger <type>` process runs: the app's HTTP trigger on a listener,
/// or its Redis triggers.
pub enum Trigger {
    Http(TcpListener),
    Redis,
}

/// Loads the app and runs its `trigger`: serves HTTP on the listener, printing `Serving
/// http://<addr>`, or subscribes the Redis triggers. When `shutdown` resolves, or a Redis
/// subscription drops (an error: the caller exits, as Spin does), it stops accepting
/// connections and taking messages, waits up to `config.shutdown_grace` for what runs, and
/// returns. Whatever still runs then is dropped with the runtime, each instance reported in
/// one line (`trigger::http`).
pub async fn run(config: HostConfig, trigger: Trigger, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let app = manifest::load(&config.manifest, config.runtime_config.as_deref(), &config.variables)?;
    let engine = trigger::engine::engine(config.pooling, config.cache)?;
    let linker = host::linker(&engine).map_err(trigger::wasm_error)?;
    // As each of Spin's trigger processes does (trigger/src/cli/stdio.rs `configure_app`).
    if let Some(dir) = &config.log_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("Failed to create log dir {}", dir.display()))?;
        eprintln!("Logging component stdio to {}", dir.join("").display());
    }
    let services = Arc::new(Services::new(config.cas_mode, &app.stores, config.log_dir.clone())?);
    let components = trigger::prepare_components(&engine, &linker, &app, services)?;

    let (stop, stopping) = watch::channel(false);
    let (work, mut all_done) = mpsc::channel::<()>(1);
    let stop_handle = Shutdown { stopping, work: work.downgrade() };

    let (serving, mut subscriptions) = match trigger {
        Trigger::Http(listener) => {
            let addr = listener.local_addr().context("reading the listener's address")?;
            let http = trigger::http::HttpTrigger::new(&app, &components, &stop_handle)?;
            println!("Serving http://{addr}");
            (futures::future::Either::Left(async move { http.serve(listener).await }), tokio::task::JoinSet::new())
        }
        Trigger::Redis => (
            futures::future::Either::Right(std::future::pending()),
            trigger::redis::subscribe_all(&app, &components, &stop_handle).await?,
        ),
    };
    let ended = tokio::select! {
        result = serving => result,
        Some(result) = subscriptions.join_next() => match result {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(anyhow::anyhow!("a Redis subscription ended")),
            Err(e) => Err(anyhow::anyhow!("a Redis subscriber failed: {e}")),
        },
        () = shutdown => Ok(()),
    };
    // The listener went with `serve`. Without the wait below, the runtime's drop would cancel
    // idle instances mid-`run_concurrent`, which wasmtime-wasi-http reports as "worker
    // panicked" (with a backtrace under RUST_BACKTRACE).
    stop.send_replace(true);
    drop(work);
    // `recv` gives `None` once every `Working` is dropped (nothing is ever sent).
    let grace = config.shutdown_grace;
    if tokio::time::timeout(grace, all_done.recv()).await.is_err() {
        eprintln!("spin-host: cutting short what still runs {grace:?} after the stop signal");
    }
    drop(subscriptions);
    ended
}

#[cfg(test)]
mod readme {
    /// The worker the README shows is the one the tests run (`examples/worker.py`), word for
    /// word, so the README's cannot drift from a worker that works.
    #[test]
    fn the_readme_shows_the_tested_worker() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (readme, worker) = (read("README.md"), read("examples/worker.py"));
        assert!(readme.contains(&format!("```python\n{worker}```")), "README.md must show examples/worker.py as it is");
    }
}
