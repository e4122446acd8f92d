//! `spin-host`: runs a Spin app like `spin up` (the flags it supports), for machines without
//! the Spin CLI. See `runtime_tests` for what it implements.

use runtime_tests::host::key_value::CasMode;
use runtime_tests::{HostConfig, Trigger, TriggerType, run};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: spin-host [--from spin.toml] [--listen 127.0.0.1:3000] [--runtime-config-file FILE]
                 [--variable NAME=VALUE]... [--kv-cas correct|lossy] [--disable-pooling] [--disable-cache]
                 [--log-dir DIR]
Variables may also be set as SPIN_VARIABLE_<NAME> environment variables.
Components' output goes to stderr and to DIR (SPIN_LOG_DIR; default .spin/logs beside the
manifest; \"\" for none), as with `spin up`.
SPIN_HOST_SHUTDOWN_GRACE_MS: how long SIGINT/SIGTERM wait for requests and handlers (default 3000).
Like `spin up`, it runs each of the app's trigger types in a process of its own: itself again,
with `--trigger http` or `--trigger redis` added (`spin trigger <type>`).";

fn main() -> ExitCode {
    let (config, listen, trigger) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("spin-host: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_tracing() {
        eprintln!("spin-host: cannot set up tracing: {e:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("spin-host: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Installed before the app loads, so that a signal while it compiles stops the host
        // once it is up rather than killing it half-started.
        let stop = stop_signal().map_err(|e| anyhow::anyhow!("cannot handle SIGINT/SIGTERM: {e}"))?;
        let Some(only) = trigger else { return supervise(&config, stop).await };
        let trigger = match only {
            TriggerType::Http => Trigger::Http(
                tokio::net::TcpListener::bind(&listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?,
            ),
            TriggerType::Redis => Trigger::Redis,
        };
        run(config, trigger, stop).await.map(|()| ExitCode::SUCCESS)
    });
    // Bounded: a blocking task (a guest's stdout write) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        // 0 after SIGINT or SIGTERM, as `spin up` exits on Ctrl-C: the stop was asked for,
        // and a supervisor that restarts a runtime on failure must not take it for one.
        Ok(code) => code,
        Err(e) => {
            eprintln!("spin-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long `spin up` waits between starting two trigger processes (up.rs
/// `MULTI_TRIGGER_START_OFFSET`).
const TRIGGER_START_OFFSET: Duration = Duration::from_millis(20);

/// `spin up`'s own part (up.rs `start_trigger_processes` and what follows): a process per
/// trigger type of the app, this binary again with `--trigger <type>` added, HTTP first, 20 ms
/// apart; each child's HTTP listener and Redis subscriber are its own, so the subscription
/// comes some ms after `Serving`, as under Spin, where a first wake-up can go unheard. On
/// SIGINT or SIGTERM each child gets SIGTERM (`kill_child_processes`). When the first child
/// ends, so does this process: 0 if it succeeded, else its exit code (128 + a signal), and the
/// others are killed (Spin's children are `kill_on_drop`).
async fn supervise(config: &HostConfig, stop: impl Future<Output = ()>) -> anyhow::Result<ExitCode> {
    use futures::stream::{FuturesUnordered, StreamExt};
    use std::os::unix::process::ExitStatusExt;
    let app = runtime_tests::manifest::load(&config.manifest, config.runtime_config.as_deref(), &config.variables)?;
    let types = TriggerType::of(&app);
    anyhow::ensure!(!types.is_empty(), "No triggers in app");
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for (i, trigger) in types.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(TRIGGER_START_OFFSET).await;
        }
        let mut command = tokio::process::Command::new(&exe);
        command.args(std::env::args_os().skip(1)).args(["--trigger", trigger.name()]).kill_on_drop(true);
        children
            .push(command.spawn().map_err(|e| anyhow::anyhow!("cannot start the {} trigger: {e}", trigger.name()))?);
    }
    let pids: Vec<String> = children.iter().filter_map(|c| c.id()).map(|id| id.to_string()).collect();
    let terminate = || {
        for pid in &pids {
            let _ = std::process::Command::new("kill").args(["-TERM", pid]).status();
        }
    };
    let mut exits: FuturesUnordered<_> = children.iter_mut().map(|child| child.wait()).collect();
    let mut stop = std::pin::pin!(stop);
    let mut stopping = false;
    loop {
        tokio::select! {
            () = &mut stop, if !stopping => {
                stopping = true;
                terminate();
            }
            Some(status) = exits.next() => {
                let status = status?;
                if status.success() {
                    return Ok(ExitCode::SUCCESS);
                }
                if types.len() > 1 {
                    println!("A trigger exited unexpectedly. Terminating.");
                    terminate();
                }
                let code = status.code().or(status.signal().map(|s| 128 + s)).unwrap_or(1);
                return Ok(ExitCode::from(code.clamp(1, 255) as u8));
            }
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM. Later ones are ignored, not fatal: the host is
/// already stopping, within its grace (`runtime_tests::SHUTDOWN_GRACE`).
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// The subscriber Spin's CLI installs before anything else (crates/telemetry/src/lib.rs `init`):
/// the OTLP tracing layer's slot, empty without OTEL_* variables; events to stderr filtered by
/// RUST_LOG (errors only when unset); a layer for `alert_in_dev` events
/// (crates/telemetry/src/alert_in_dev.rs); and the `log` crate bridged in (Spin's
/// `tracing-log-compat`). What it costs:
/// - The empty slot is an `Option` layer set to `None`, which tracing-subscriber counts as
///   interested in everything (`impl Layer for Option<L>`: `Interest::always()`, `enabled` true).
///   So every span Spin opens on a request, a message or a host call (its `#[instrument]`s,
///   mirrored where this host implements them) is created, entered, exited and closed in the
///   registry, though no layer records it. Left out until 2026-12-06, the host served a
///   do-nothing component 1.21x as fast as Spin; with it, 1.12x (docs/numbers.md).
/// - The span-field directives make every callsite's interest "sometimes", and the alert
///   layer gives no level hint, so no level is switched off globally: each trace/debug/`log`
///   call in wasmtime, hyper and the rest asks the filters when it is hit.
fn init_tracing() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn, fmt, prelude::*, registry};
    let filter = EnvFilter::from_default_env()
        .add_directive("wasmtime_wasi_http=warn".parse()?)
        .add_directive("watchexec=off".parse()?)
        .add_directive("[{app_log}]=off".parse()?)
        .add_directive("[{app_log_non_utf8}]=off".parse()?);
    let fmt_layer =
        fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).with_filter(filter);
    let alert_layer = AlertInDev.with_filter(filter_fn(|meta| meta.fields().field("alert_in_dev").is_some()));
    // The OTLP layer's type does not matter while it is `None`.
    let otel_tracing_layer: Option<tracing_subscriber::layer::Identity> = None;
    registry().with(otel_tracing_layer).with(fmt_layer).with(alert_layer).try_init()?;
    Ok(())
}

/// Prints the message of an event tagged `alert_in_dev` as a warning, whatever RUST_LOG says.
struct AlertInDev;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AlertInDev {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message;
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    eprintln!("Warning: {value:?}");
                }
            }
        }
        event.record(&mut Message);
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(HostConfig, String, Option<TriggerType>), String> {
    let mut manifest = PathBuf::from("spin.toml");
    let mut listen = "127.0.0.1:3000".to_string();
    let mut runtime_config = None;
    let mut flag_vars = HashMap::new();
    let mut cas_mode = CasMode::Correct;
    let mut pooling = true;
    let mut trigger = None;
    let mut log_dir = std::env::var_os("SPIN_LOG_DIR").map(PathBuf::from);
    // As Spin reads it (clap's bool from the environment): set and not false.
    let mut cache = !std::env::var("DISABLE_WASMTIME_CACHE").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--from" | "-f" => manifest = PathBuf::from(value("--from")?),
            "--listen" => listen = value("--listen")?,
            "--runtime-config-file" => runtime_config = Some(PathBuf::from(value("--runtime-config-file")?)),
            "--log-dir" | "-L" => log_dir = Some(PathBuf::from(value("--log-dir")?)),
            "--variable" => {
                let pair = value("--variable")?;
                let (name, v) = pair.split_once('=').ok_or(format!("--variable takes NAME=VALUE, not {pair:?}"))?;
                flag_vars.insert(name.to_string(), v.to_string());
            }
            "--kv-cas" => {
                cas_mode = match value("--kv-cas")?.as_str() {
                    "correct" => CasMode::Correct,
                    "lossy" => CasMode::Lossy,
                    other => return Err(format!("--kv-cas is correct or lossy, not {other:?}")),
                }
            }
            "--disable-pooling" => pooling = false,
            "--disable-cache" => cache = false,
            "--trigger" => {
                trigger = match value("--trigger")?.as_str() {
                    "http" => Some(TriggerType::Http),
                    "redis" => Some(TriggerType::Redis),
                    other => return Err(format!("--trigger is http or redis, not {other:?}")),
                }
            }
            "-h" | "--help" => return Err("help".to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // A spin.toml given as a directory means the manifest inside it, as with `spin up`.
    if manifest.is_dir() {
        manifest = manifest.join("spin.toml");
    }
    let mut variables: HashMap<String, String> = std::env::vars()
        .filter_map(|(k, v)| k.strip_prefix("SPIN_VARIABLE_").map(|name| (name.to_lowercase(), v)))
        .collect();
    variables.extend(flag_vars);
    // Not Spin's: how long a stop waits for what runs (a supervisor with a longer kill timeout
    // may allow more; 0 cuts at once).
    let shutdown_grace = match std::env::var("SPIN_HOST_SHUTDOWN_GRACE_MS") {
        Ok(ms) => Duration::from_millis(
            ms.parse().map_err(|_| format!("SPIN_HOST_SHUTDOWN_GRACE_MS={ms:?} is not a number of milliseconds"))?,
        ),
        Err(_) => runtime_tests::SHUTDOWN_GRACE,
    };
    // Spin's default for an app from a local manifest; an empty one turns logging to disk off.
    let log_dir = match log_dir {
        Some(dir) if dir.as_os_str().is_empty() => None,
        Some(dir) => Some(dir),
        None => Some(manifest.parent().unwrap_or(Path::new("")).join(".spin").join("logs")),
    };
    let config = HostConfig { manifest, runtime_config, variables, cas_mode, pooling, cache, shutdown_grace, log_dir };
    Ok((config, listen, trigger))
}
