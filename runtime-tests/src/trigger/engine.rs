//! The engine and stores as Spin 4.1 builds them, because each setting changes what guest code
//! costs: epoch interruption (compiled code checks an epoch counter at every function entry and
//! loop head), the pooling instance allocator when the system has the address space for it, a
//! store limiter on every store, and a call hook timing the guest on every entry and exit
//! (the CLI's default feature `cpu-time-metrics`).

use crate::host::Ctx;
use anyhow::Context;
use std::time::{Duration, Instant};
use wasmtime::{
    CallHook, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiterAsync, Store,
};

/// Spin's DEFAULT_EPOCH_TICK_INTERVAL (crates/core/src/lib.rs).
const EPOCH_TICK_INTERVAL: Duration = Duration::from_millis(10);

const MB: usize = 1 << 20;
const GB: usize = 1 << 30;

/// Spin's `Config::default()` (crates/core/src/lib.rs), built into an engine with its epoch
/// ticker running (`EngineBuilder::build`). `pooling: false` is `spin up --disable-pooling`;
/// `cache: false` is `--disable-cache` (by default Spin keeps compiled components in Wasmtime's
/// cache, trigger/src/cli.rs, so that a restart does not compile them again: measured here,
/// the app served 1.2 s after start without it and ~60 ms after under Spin).
pub fn engine(pooling: bool, cache: bool) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    // A diagnostic, not Spin's: `SPIN_HOST_PERFMAP=1` writes /tmp/perf-<pid>.map so that `perf
    // record` names the guest's functions (docs/numbers.md, "Where an admission's time goes").
    if std::env::var_os("SPIN_HOST_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if cache {
        // Wasmtime's default cache configuration, as Spin's `enable_cache(&None)`. Where it
        // cannot be had (no home directory, say) Spin would refuse to start; the host warns
        // and compiles every time instead, so that a test machine without one still runs.
        match wasmtime::Cache::from_file(None) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(e) => eprintln!("spin-host: no compilation cache ({e}); compiling on every start"),
        }
    }
    if pooling && use_pooling()? {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config()?));
    }
    let engine = Engine::new(&config).map_err(super::wasm_error).context("creating the wasmtime engine")?;
    spawn_epoch_ticker(&engine);
    Ok(engine)
}

/// Spin's pooling limits, all derived from one instance count (crates/core/src/lib.rs
/// `Config::default`). Of Spin's environment overrides only SPIN_MAX_INSTANCE_COUNT is read.
fn pooling_config() -> anyhow::Result<PoolingAllocationConfig> {
    let max_instances: u32 = match std::env::var("SPIN_MAX_INSTANCE_COUNT") {
        Ok(v) => v.parse().with_context(|| format!("SPIN_MAX_INSTANCE_COUNT={v:?} is not a count"))?,
        Err(_) => 1_000,
    };
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(max_instances)
        .total_memories(max_instances)
        .total_tables(2 * max_instances)
        .total_stacks(max_instances)
        .total_core_instances(4 * max_instances)
        .table_elements(100_000)
        .max_component_instance_size(10 * MB)
        .max_core_instance_size(10 * MB)
        .max_core_instances_per_component(200)
        .max_tables_per_component(64)
        .max_memories_per_component(32)
        .max_tables_per_module(2)
        .max_memories_per_module(2)
        .max_memory_size(4 * GB)
        .linear_memory_keep_resident(2 * MB)
        .table_keep_resident(MB / 2);
    Ok(pooling)
}

/// Whether to pool, as Spin decides (crates/core/src/lib.rs `use_pooling_allocator_by_default`):
/// SPIN_WASMTIME_POOLING=1/0 if set, otherwise whether a memory can reserve 2^42 bytes of
/// address space (some 39-bit systems cannot, and then Spin allocates on demand).
fn use_pooling() -> anyhow::Result<bool> {
    match std::env::var("SPIN_WASMTIME_POOLING").as_deref() {
        Ok("1") => return Ok(true),
        Ok("0") => return Ok(false),
        Ok(other) => anyhow::bail!("SPIN_WASMTIME_POOLING={other:?}: only 1 or 0"),
        Err(_) => {}
    }
    const BITS: u32 = 42;
    let mut config = Config::new();
    config.wasm_memory64(true);
    config.memory_reservation(1 << BITS);
    let Ok(engine) = Engine::new(&config) else { return Ok(false) };
    let mut store = Store::new(&engine, ());
    // The maximum is in 64 KiB pages.
    let ty = wasmtime::MemoryType::new64(0, Some(1 << (BITS - 16)));
    Ok(wasmtime::Memory::new(&mut store, ty).is_ok())
}

/// A thread bumping the engine's epoch every tick until the engine is gone
/// (crates/core/src/lib.rs `maybe_spawn_epoch_ticker`).
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(EPOCH_TICK_INTERVAL);
            let Some(engine) = weak.upgrade() else { break };
            engine.increment_epoch();
        }
    });
}

/// A store as Spin's `StoreBuilder::build` makes one (crates/core/src/store.rs), with the call
/// hook `FactorsInstanceBuilder::instantiate` adds (crates/factors-executor/src/lib.rs).
pub fn store(engine: &Engine, ctx: Ctx) -> Store<Ctx> {
    let mut store = Store::new(engine, ctx);
    store.limiter_async(|ctx| &mut ctx.limits);
    // Epoch interruption traps a store without a deadline; Spin's is "practically forever"
    // (and no request deadline by default, so it stays so).
    store.set_epoch_deadline(u64::MAX / 2);
    store.call_hook(|mut store, hook| {
        store.data_mut().cpu.on_call(hook);
        Ok(())
    });
    store
}

/// Guest time of one instance (Spin: `CpuTimeCallHook`). Spin hands the total to a metrics
/// histogram when the instance is dropped, a no-op unless OTLP export is configured; here it
/// is only kept.
#[derive(Default)]
pub struct CpuTime {
    entered: Option<Instant>,
    pub elapsed: Duration,
}

impl CpuTime {
    fn on_call(&mut self, hook: CallHook) {
        match hook {
            CallHook::CallingWasm | CallHook::ReturningFromHost => self.entered = Some(Instant::now()),
            CallHook::ReturningFromWasm | CallHook::CallingHost => {
                if let Some(entered) = self.entered.take() {
                    self.elapsed += entered.elapsed();
                }
            }
        }
    }
}

/// Spin's store limiter, installed on every store; without `max_instance_memory` in the
/// runtime config it allows any growth and only counts memory (crates/core/src/limits.rs).
#[derive(Default)]
pub struct Limits {
    pub memory_consumed: u64,
}

#[async_trait::async_trait]
impl ResourceLimiterAsync for Limits {
    async fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.memory_consumed = self.memory_consumed.saturating_add(desired.saturating_sub(current) as u64);
        Ok(true)
    }

    async fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}
