//! The two triggers, and what they share: the engine and one pre-instantiated component per
//! manifest component (compiled once per distinct `.wasm`, instantiated per event).

pub mod engine;
pub mod http;
pub mod redis;

use crate::Services;
use crate::host::{Ctx, SpinAppPre};
use crate::manifest::{App, ComponentConfig};
use anyhow::Context;
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p3::bindings::ServicePre;

/// wasmtime 47 has its own error type; the host speaks anyhow.
pub fn wasm_error(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

/// A component ready to instantiate.
pub struct Prepared {
    pub config: Arc<ComponentConfig>,
    pub pre: InstancePre<Ctx>,
    pub services: Arc<Services>,
}

impl Prepared {
    pub fn store(&self) -> Store<Ctx> {
        engine::store(self.pre.engine(), Ctx::new(self.config.clone(), self.services.clone()))
    }

    pub fn http(&self) -> anyhow::Result<ServicePre<Ctx>> {
        ServicePre::new(self.pre.clone())
            .map_err(wasm_error)
            .with_context(|| format!("component {:?} does not export wasi:http/handler", self.config.id))
    }

    pub fn redis(&self) -> anyhow::Result<SpinAppPre<Ctx>> {
        SpinAppPre::new(self.pre.clone())
            .map_err(wasm_error)
            .with_context(|| format!("component {:?} does not export spin:redis/inbound-redis", self.config.id))
    }
}

pub fn prepare_components(
    engine: &Engine,
    linker: &Linker<Ctx>,
    app: &App,
    services: Arc<Services>,
) -> anyhow::Result<HashMap<String, Arc<Prepared>>> {
    let mut compiled: HashMap<std::path::PathBuf, Component> = HashMap::new();
    let mut prepared = HashMap::new();
    for (id, config) in &app.components {
        let component = match compiled.get(&config.source) {
            Some(component) => component.clone(),
            None => {
                let component = Component::from_file(engine, &config.source)
                    .map_err(wasm_error)
                    .with_context(|| format!("loading component {id:?} from {}", config.source.display()))?;
                compiled.insert(config.source.clone(), component.clone());
                component
            }
        };
        let pre = linker
            .instantiate_pre(&component)
            .map_err(wasm_error)
            .with_context(|| format!("linking component {id:?}"))?;
        prepared.insert(id.clone(), Arc::new(Prepared { config: config.clone(), pre, services: services.clone() }));
    }
    Ok(prepared)
}
