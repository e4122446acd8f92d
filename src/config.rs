//! Spin variables read into one typed `Config`. Defaults live in spin.toml's `[variables]`;
//! this module only parses and checks them. An instance reads them once and keeps them for
//! the requests Spin gives it: they come from spin.toml and the process's `SPIN_VARIABLE_*`
//! settings, which do not change while it runs. The drainer component is given only the
//! variables it uses (`[component.drainer.variables]`), so it reads only those: Spin refuses
//! a component a variable it was not given.

use crate::keys::Keys;
use crate::policy::{DEFAULT_KIND, Policies, Policy};
use spin_sdk::variables;
use std::cell::RefCell;
use std::rc::Rc;
use task_core::delivery::Secret;
use task_core::outbound::AllowedHosts;

/// Where the per-user ledger lives (the `ledger` variable; README "Design" compares them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerBackend {
    /// In Redis, read and written by the one script that admits a task: one round trip.
    Redis,
    /// In Spin's key-value store, with `wasi:keyvalue` compare-and-swap and read-back.
    Kv,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub redis_address: String,
    /// The `per_second` and `per_minute` variables, as set.
    pub per_second: u32,
    pub per_minute: u32,
    /// Every kind's policy and the tiers (the `policies` variable; `per_second` and
    /// `per_minute` define the `default` kind unless it names that kind).
    pub policies: Policies,
    /// Whether answers carry the de-facto `X-RateLimit-*` fields beside the IETF ones
    /// (the API's only; `true` in the drainer).
    pub x_ratelimit_headers: bool,
    /// Most tasks one user may have queued; 0 = unlimited (and 0 in the drainer, which
    /// admits nothing).
    pub max_backlog: u64,
    /// Bearer token for admin routes; `None` leaves them open (local use). `None` in the
    /// drainer, which answers no request.
    pub admin_token: Option<String>,
    pub keys: Keys,
    /// `Redis` in the drainer, which never reads or writes a ledger.
    pub ledger: LedgerBackend,
    /// The one `allowed_outbound_hosts` entry deliveries may use (the `delivery_hosts`
    /// variable); every kind's target is one it allows. Empty: no outbound HTTP.
    pub delivery_hosts: AllowedHosts,
    /// The Standard Webhooks key deliveries are signed with (`delivery_secret`): the drainers
    /// make deliveries, and so do admissions that start a first attempt.
    pub delivery_secret: Option<Secret>,
    /// What every script gets first (ARGV[1..6], `lib.lua`): key prefix, log key, task
    /// record lifetime, the default policy, and what a lane's completion history keeps.
    pub script_header: [String; 6],
}

thread_local! {
    static LOADED: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
}

/// The task log stream's key, under no prefix so that tools find it.
const LOG_KEY: &str = "task_log";

/// The component reading its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Component {
    /// The HTTP API: every variable.
    Api,
    /// The drainer: the store's address and key prefix, the policies (their windows set
    /// what a lane's completion history keeps) and what deliveries need (`delivery_hosts`,
    /// `delivery_secret`), nothing else.
    Drainer,
}

impl Config {
    /// The HTTP component's configuration, read on this instance's first request and kept.
    pub async fn get() -> anyhow::Result<Rc<Config>> {
        Config::get_for(Component::Api).await
    }

    /// The drainer's: only the variables it is given.
    pub async fn drainer() -> anyhow::Result<Rc<Config>> {
        Config::get_for(Component::Drainer).await
    }

    /// One component runs per instance, so the first read is the only one kept.
    async fn get_for(component: Component) -> anyhow::Result<Rc<Config>> {
        if let Some(config) = LOADED.with_borrow(|c| c.clone()) {
            return Ok(config);
        }
        let config = Rc::new(Config::load(component).await?);
        LOADED.set(Some(config.clone()));
        Ok(config)
    }

    async fn load(component: Component) -> anyhow::Result<Config> {
        let api = component == Component::Api;
        let redis_address = get("redis_address").await?;
        let per_second = quota(&get("per_second").await?, "per_second")?;
        let per_minute = quota(&get("per_minute").await?, "per_minute")?;
        let policies = Policies::parse(&get("policies").await?, Policy::legacy(per_second, per_minute))
            .map_err(|e| anyhow::anyhow!("variable policies: {e}"))?;
        let x_ratelimit_headers = match api_only(api, "x_ratelimit_headers", "on").await?.trim() {
            "on" => true,
            "off" => false,
            other => anyhow::bail!("variable x_ratelimit_headers must be on or off, not {other:?}"),
        };
        let max_backlog = api_only(api, "max_backlog", "0")
            .await?
            .trim()
            .parse::<u64>()
            .map_err(|_| anyhow::anyhow!("variable max_backlog must be a whole number (0 = unlimited)"))?;
        let admin_token = Some(api_only(api, "admin_token", "").await?).filter(|t| !t.is_empty());
        let prefix = get("key_prefix").await?;
        let ledger = match api_only(api, "ledger", "redis").await?.trim() {
            "redis" => LedgerBackend::Redis,
            "kv" => LedgerBackend::Kv,
            other => anyhow::bail!("variable ledger must be redis or kv, not {other:?}"),
        };
        let delivery_hosts = AllowedHosts::parse(&get("delivery_hosts").await?)
            .map_err(|e| anyhow::anyhow!("variable delivery_hosts: {e}"))?;
        policies.check_targets(&delivery_hosts).map_err(|e| anyhow::anyhow!("variable policies: {e}"))?;
        if let (LedgerBackend::Kv, Some((kind, _))) = (ledger, policies.deliveries().next()) {
            anyhow::bail!(
                "variable ledger = kv cannot go with a kind that has a target or is pulled (kinds.{kind}): \
                 deliveries and claims re-admit their retries through the ledger in Redis, so set ledger = redis"
            );
        }
        let delivery_secret = match get("delivery_secret").await?.trim() {
            "" => None,
            text => Some(Secret::parse(text).map_err(|e| anyhow::anyhow!("variable delivery_secret: {e}"))?),
        };
        let keys = Keys::new(&prefix, LOG_KEY);
        let default_spec = policies.resolve(DEFAULT_KIND, None).map(|p| p.spec().to_string()).unwrap_or_default();
        let (history, history_ms) = policies.history();
        let script_header =
            crate::scripts::Header { keys: &keys, default_spec: &default_spec, history, history_ms }.argv();
        Ok(Config {
            redis_address,
            per_second,
            per_minute,
            policies,
            x_ratelimit_headers,
            max_backlog,
            admin_token,
            keys,
            ledger,
            delivery_hosts,
            delivery_secret,
            script_header,
        })
    }
}

async fn get(name: &str) -> anyhow::Result<String> {
    variables::get(name).await.map_err(|e| anyhow::anyhow!("variable {name}: {e:?}"))
}

/// A variable only the API is given; `unused` stands for it in the drainer.
async fn api_only(api: bool, name: &str, unused: &str) -> anyhow::Result<String> {
    if api { get(name).await } else { Ok(unused.to_string()) }
}

fn quota(value: &str, name: &str) -> anyhow::Result<u32> {
    use crate::policy::MAX_QUOTA;
    match value.trim().parse::<u32>() {
        Ok(n) if n <= MAX_QUOTA => Ok(n),
        _ => anyhow::bail!("variable {name} must be a whole number from 0 to {MAX_QUOTA}, not {value:?}"),
    }
}

#[cfg(test)]
impl Config {
    /// A configuration of `policies` and defaults for the rest, for unit tests.
    pub fn for_tests(policies: Policies, admin_token: Option<String>) -> Config {
        let keys = Keys::new("taskq:", LOG_KEY);
        Config {
            redis_address: String::new(),
            per_second: 1,
            per_minute: 20,
            policies,
            x_ratelimit_headers: true,
            max_backlog: 0,
            admin_token,
            keys,
            ledger: LedgerBackend::Redis,
            delivery_hosts: AllowedHosts::parse("").unwrap_or_else(|e| panic!("{e}")),
            delivery_secret: None,
            script_header: Default::default(),
        }
    }
}
