//! The part of `spin.toml` (manifest version 2) and of the runtime-config file that the host
//! needs, parsed with serde, with `{{ variable }}` templates resolved as Spin resolves them.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Deserialize)]
struct Manifest {
    spin_manifest_version: u32,
    application: Application,
    #[serde(default)]
    variables: BTreeMap<String, VariableDef>,
    #[serde(default)]
    trigger: Triggers,
    #[serde(default)]
    component: BTreeMap<String, ComponentDef>,
}

// Fields the host ignores (name, version, description, authors, build, watch, ...) are
// tolerated, as Spin tolerates them; the ones it uses are checked.
#[derive(Deserialize)]
struct Application {
    #[serde(default)]
    trigger: AppTriggers,
}

#[derive(Deserialize, Default)]
struct AppTriggers {
    redis: Option<AppRedisTrigger>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppRedisTrigger {
    address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariableDef {
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    #[allow(dead_code)]
    secret: bool,
}

#[derive(Deserialize, Default)]
struct Triggers {
    #[serde(default)]
    http: Vec<HttpTriggerDef>,
    #[serde(default)]
    redis: Vec<RedisTriggerDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTriggerDef {
    route: String,
    component: String,
    #[serde(default)]
    #[allow(dead_code)]
    executor: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisTriggerDef {
    address: Option<String>,
    channel: String,
    component: String,
}

#[derive(Deserialize)]
struct ComponentDef {
    source: String,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

/// A component, with its templates resolved.
#[derive(Debug)]
pub struct ComponentConfig {
    pub id: String,
    pub source: PathBuf,
    pub key_value_stores: Vec<String>,
    pub allowed_outbound_hosts: crate::allowed_hosts::AllowedHosts,
    /// What `spin:variables/get` answers, by name.
    pub variables: HashMap<String, String>,
}

/// An HTTP route: exact, or a prefix when the manifest's route ends in `/...`.
#[derive(Debug, Clone)]
pub enum Route {
    Exact(String),
    Prefix(String),
}

impl Route {
    fn parse(route: &str) -> Route {
        match route.strip_suffix("/...") {
            Some(prefix) => Route::Prefix(prefix.to_string()),
            None => Route::Exact(route.to_string()),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Route::Exact(route) => path == route,
            Route::Prefix(prefix) => {
                path == prefix || (path.starts_with(prefix.as_str()) && path[prefix.len()..].starts_with('/'))
            }
        }
    }

    /// The route as the manifest writes it (Spin's `raw_route`).
    pub fn raw(&self) -> String {
        match self {
            Route::Exact(route) => route.clone(),
            Route::Prefix(prefix) => format!("{prefix}/..."),
        }
    }

    /// The route without its trailing wildcard (Spin's `raw_route_or_prefix`).
    pub fn prefix(&self) -> &str {
        match self {
            Route::Exact(route) | Route::Prefix(route) => route,
        }
    }

    /// What a wildcard route matched of `path` (Spin's `PATH_INFO`); empty for exact routes.
    pub fn path_info<'a>(&self, path: &'a str) -> &'a str {
        match self {
            Route::Exact(_) => "",
            Route::Prefix(prefix) => path.get(prefix.len()..).unwrap_or(""),
        }
    }

    /// Longer (more specific) routes win, as in Spin.
    fn specificity(&self) -> (usize, bool) {
        match self {
            Route::Exact(r) => (r.len(), true),
            Route::Prefix(p) => (p.len(), false),
        }
    }
}

/// A key-value store's backend, from the runtime config.
#[derive(Debug, Clone)]
pub enum StoreBackend {
    Redis {
        url: String,
    },
    /// No runtime config for the label: process-local memory (Spin would use SQLite).
    Memory,
}

/// The whole application as the host runs it.
#[derive(Debug)]
pub struct App {
    pub components: HashMap<String, Arc<ComponentConfig>>,
    /// Routes, most specific first.
    pub http_routes: Vec<(Route, String)>,
    /// `(address, channel, component)`.
    pub redis_triggers: Vec<(String, String, String)>,
    pub stores: HashMap<String, StoreBackend>,
}

#[derive(Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    key_value_store: BTreeMap<String, StoreConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreConfig {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    #[allow(dead_code)]
    path: Option<String>,
}

/// Loads `spin.toml`; `overrides` are variable values given on the command line or by
/// `SPIN_VARIABLE_*` (already merged, command line first).
pub fn load(
    manifest_path: &Path,
    runtime_config: Option<&Path>,
    overrides: &HashMap<String, String>,
) -> anyhow::Result<App> {
    let text =
        std::fs::read_to_string(manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest: Manifest = toml::from_str(&text).with_context(|| format!("parsing {}", manifest_path.display()))?;
    if manifest.spin_manifest_version != 2 {
        bail!("{}: only spin_manifest_version = 2 is supported", manifest_path.display());
    }
    let dir = manifest_path.parent().unwrap_or(Path::new("."));

    let mut app_vars = HashMap::new();
    // The defaults alone: what Spin's loader checks templated allowed hosts with.
    let defaults = manifest
        .variables
        .iter()
        .filter_map(|(name, def)| Some((name.clone(), def.default.clone()?)))
        .collect::<HashMap<_, _>>();
    for (name, def) in &manifest.variables {
        check_variable_name(name)?;
        let value = overrides.get(name).cloned().or_else(|| def.default.clone());
        match value {
            Some(value) => {
                app_vars.insert(name.clone(), value);
            }
            None if def.required || def.default.is_none() => {
                bail!("variable {name:?} is required: set SPIN_VARIABLE_{}", name.to_uppercase())
            }
            None => {}
        }
    }
    for name in overrides.keys() {
        if !manifest.variables.contains_key(name) {
            eprintln!("warning: variable {name:?} is set but not declared in the manifest");
        }
    }

    let mut components = HashMap::new();
    for (id, def) in &manifest.component {
        let variables = def
            .variables
            .iter()
            .map(|(name, template)| Ok((name.clone(), resolve(template, &app_vars)?)))
            .collect::<anyhow::Result<HashMap<_, _>>>()
            .with_context(|| format!("component {id:?} variables"))?;
        let allowed_outbound_hosts =
            crate::allowed_hosts::AllowedHosts::load(&def.allowed_outbound_hosts, &defaults, &app_vars)
                .with_context(|| format!("component {id:?} allowed_outbound_hosts"))?;
        components.insert(
            id.clone(),
            Arc::new(ComponentConfig {
                id: id.clone(),
                source: dir.join(&def.source),
                key_value_stores: def.key_value_stores.clone(),
                allowed_outbound_hosts,
                variables,
            }),
        );
    }

    let mut http_routes = Vec::new();
    for trigger in &manifest.trigger.http {
        if !components.contains_key(&trigger.component) {
            bail!("HTTP route {:?} names unknown component {:?}", trigger.route, trigger.component);
        }
        http_routes.push((Route::parse(&trigger.route), trigger.component.clone()));
    }
    http_routes.sort_by_key(|(route, _)| std::cmp::Reverse(route.specificity()));

    let default_address = manifest.application.trigger.redis.and_then(|r| r.address);
    let mut redis_triggers = Vec::new();
    for trigger in &manifest.trigger.redis {
        if !components.contains_key(&trigger.component) {
            bail!("Redis channel {:?} names unknown component {:?}", trigger.channel, trigger.component);
        }
        let address = trigger
            .address
            .clone()
            .or_else(|| default_address.clone())
            .with_context(|| format!("Redis trigger for {:?} has no address", trigger.channel))?;
        redis_triggers.push((
            resolve(&address, &app_vars)?,
            resolve(&trigger.channel, &app_vars)?,
            trigger.component.clone(),
        ));
    }

    let mut stores = HashMap::new();
    if let Some(path) = runtime_config {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: RuntimeConfig = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for (label, store) in config.key_value_store {
            let backend = match (store.kind.as_str(), store.url) {
                ("redis", Some(url)) => StoreBackend::Redis { url },
                ("redis", None) => bail!("key_value_store.{label}: type \"redis\" needs a url"),
                ("spin", _) => StoreBackend::Memory,
                (other, _) => {
                    bail!("key_value_store.{label}: unsupported type {other:?} (this host knows redis and spin)")
                }
            };
            stores.insert(label, backend);
        }
    }
    for component in components.values() {
        for label in &component.key_value_stores {
            if !stores.contains_key(label) {
                eprintln!(
                    "warning: key-value store {label:?} has no runtime config; using process memory (not shared between replicas)"
                );
                stores.insert(label.clone(), StoreBackend::Memory);
            }
        }
    }

    Ok(App { components, http_routes, redis_triggers, stores })
}

/// Spin variable names: lower-case letters, digits and underscores, starting with a letter.
pub fn check_variable_name(name: &str) -> anyhow::Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!("invalid variable name {name:?}: use lower-case letters, digits and underscores");
    }
    Ok(())
}

/// Expands `{{ name }}` templates from application variables.
pub fn resolve(template: &str, vars: &HashMap<String, String>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").with_context(|| format!("unclosed '{{{{' in {template:?}"))?;
        let name = after[..end].trim();
        let value = vars.get(name).with_context(|| format!("{template:?} uses undefined variable {name:?}"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_from_variables() {
        let vars = HashMap::from([("a".to_string(), "x".to_string()), ("b_2".to_string(), "y".to_string())]);
        assert_eq!(resolve("{{ a }}:{{b_2}}-z", &vars).ok(), Some("x:y-z".to_string()));
        assert!(resolve("{{ missing }}", &vars).is_err());
        assert!(resolve("{{ a ", &vars).is_err());
    }

    #[test]
    fn routes_match_exactly_or_by_prefix() {
        assert!(Route::parse("/api").matches("/api"));
        assert!(!Route::parse("/api").matches("/api/x"));
        let wild = Route::parse("/api/...");
        assert!(wild.matches("/api") && wild.matches("/api/x/y"));
        assert!(!wild.matches("/apix"));
        assert!(Route::parse("/...").matches("/anything"));
        assert_eq!((wild.raw(), wild.prefix(), wild.path_info("/api/x/y")), ("/api/...".to_string(), "/api", "/x/y"));
        assert_eq!(Route::parse("/...").path_info("/a"), "/a");
    }

    #[test]
    fn variable_names_follow_spin_rules() {
        assert!(check_variable_name("redis_address").is_ok());
        assert!(check_variable_name("Redis").is_err());
        assert!(check_variable_name("1a").is_err());
    }

    /// The repo's own spin.toml loads, with overrides applied to templates.
    #[test]
    fn the_apps_manifest_loads() -> anyhow::Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spin.toml");
        let overrides = HashMap::from([("redis_address".to_string(), "redis://127.0.0.1:7000".to_string())]);
        let app = load(&root, None, &overrides)?;
        let api = &app.components["api"];
        assert_eq!(api.variables["redis_address"], "redis://127.0.0.1:7000");
        assert!(api.allowed_outbound_hosts.check_url("redis://127.0.0.1:7000", "redis"));
        assert!(!api.allowed_outbound_hosts.check_url("redis://127.0.0.1:6379", "redis"));
        assert!(app.redis_triggers.iter().any(|(a, c, _)| a == "redis://127.0.0.1:7000" && c == "taskq:tick"));
        Ok(())
    }

    /// The drainer hears its ticks, the lease lapsing, and every alarm the scripts set (the
    /// keys' words and `ALARM_SECONDS` of the core): one fact, in two files.
    #[test]
    fn the_drainer_listens_for_every_alarm() -> anyhow::Result<()> {
        use task_core::keys::{ALARM_SECONDS, alarm_word, word};
        let app = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../spin.toml"), None, &HashMap::new())?;
        let prefix = &app.components["drainer"].variables["key_prefix"];
        let keyspace = |word: &str| format!("__keyspace@0__:{prefix}{word}");
        let mut expected = vec![format!("{prefix}{}", word::TICK), keyspace(word::LEASE)];
        expected.extend(ALARM_SECONDS.map(|s| keyspace(&alarm_word(s))));
        let mut heard: Vec<_> = app
            .redis_triggers
            .iter()
            .filter(|(_, _, component)| component == "drainer")
            .map(|(_, c, _)| c.clone())
            .collect();
        heard.sort();
        expected.sort();
        assert_eq!(heard, expected);
        assert!(ALARM_SECONDS.windows(2).all(|w| w[0] < w[1]), "drain.lua renews the alarms by the first");
        Ok(())
    }
}
