//! The Spin interfaces the app imports, one file each, wired here: the single `bindgen!`
//! (an inline world over `runtime-tests/wit/`), the per-instance state `Ctx`, and the
//! linker with WASI (p2 for Rust's std, p3 for the SDK), wasi:http and our interfaces.

pub mod key_value;
pub mod outbound_http;
pub mod redis;
pub mod stdio;
pub mod variables;

use crate::manifest::ComponentConfig;
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p3::{WasiHttpCtxView, WasiHttpView};

wasmtime::component::bindgen!({
    path: "wit",
    world: "spin-host:host/spin-app",
    imports: {
        // Synchronous in WIT, but they talk to Redis: the guest blocks, the host awaits.
        "wasi:keyvalue/store": async | trappable,
        "wasi:keyvalue/atomics": async | trappable,
        default: trappable,
    },
    exports: { default: async | store },
    with: {
        "spin:redis/redis.connection": redis::Connection,
        "wasi:keyvalue/store.bucket": key_value::Bucket,
        "wasi:keyvalue/atomics.cas": key_value::CasHandle,
    },
});

/// What one instance sees: one Redis message, or up to 128 HTTP requests (Spin 4 reuses
/// HTTP instances, see `trigger::http`).
pub struct Ctx {
    pub table: ResourceTable,
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    /// Outbound wasi:http: this component's allowed hosts and the process's client pool.
    pub outbound_http: outbound_http::Hooks,
    /// The component's manifest settings and the process-wide shared services.
    pub component: Arc<ComponentConfig>,
    pub services: Arc<crate::Services>,
    /// Outbound Redis connections open now (Spin caps them per instance).
    pub redis_connections: usize,
    /// CAS handles already swapped: Spin keeps them, and their connections, until the
    /// instance ends (see `key_value`).
    pub swapped: Vec<key_value::CasHandle>,
    /// What Spin's core keeps per store: its memory limiter and the guest's CPU time (see
    /// `trigger::engine`).
    pub limits: crate::trigger::engine::Limits,
    pub cpu: crate::trigger::engine::CpuTime,
}

impl Ctx {
    pub fn new(component: Arc<ComponentConfig>, services: Arc<crate::Services>) -> Ctx {
        // Where Spin 4.1 puts a component's output: its log files, and its stdout, like its
        // stderr, on the runtime's stderr (see `stdio`).
        let log_dir = services.log_dir.as_deref();
        let output = |suffix| stdio::Piped::new(stdio::ComponentOutput::open(log_dir, &component.id, suffix));
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().stdout(output("stdout")).stderr(output("stderr")).build();
        Ctx {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            outbound_http: outbound_http::Hooks { component: component.clone(), clients: services.http.clone() },
            component,
            services,
            redis_connections: 0,
            swapped: Vec::new(),
            limits: Default::default(),
            cpu: Default::default(),
        }
    }
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Ctx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { hooks: &mut self.outbound_http, table: &mut self.table, ctx: &mut self.http }
    }
}

/// A linker with everything the app may import.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<Ctx>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    spin::redis::redis::add_to_linker::<_, HasSelf<Ctx>>(&mut linker, |ctx| ctx)?;
    spin::variables::variables::add_to_linker::<_, HasSelf<Ctx>>(&mut linker, |ctx| ctx)?;
    wasi::keyvalue::store::add_to_linker::<_, HasSelf<Ctx>>(&mut linker, |ctx| ctx)?;
    wasi::keyvalue::atomics::add_to_linker::<_, HasSelf<Ctx>>(&mut linker, |ctx| ctx)?;
    Ok(linker)
}
