//! Spin variables (SPEC §4) read into one typed `Config`. Defaults live in spin.toml's
//! `[variables]`; this module only parses and checks them.

use crate::keys::Keys;
use crate::slot::Limits;
use spin_sdk::variables;

#[derive(Clone, Debug)]
pub struct Config {
    pub redis_address: String,
    pub limits: Limits,
    /// Most tasks one user may have queued; 0 = unlimited.
    pub max_backlog: u64,
    /// Bearer token for admin routes; `None` leaves them open (local use).
    pub admin_token: Option<String>,
    pub keys: Keys,
}

/// The task log stream's key (SPEC §3 default), under no prefix so that tools find it.
const LOG_KEY: &str = "task_log";

/// Most tasks per window we accept in configuration: the ledger keeps that many slots per
/// user, so the bound keeps a ledger value small.
const MAX_QUOTA: u32 = 1_000;

impl Config {
    pub async fn load() -> anyhow::Result<Config> {
        let redis_address = get("redis_address").await?;
        let per_second = quota(&get("per_second").await?, "per_second")?;
        let per_minute = quota(&get("per_minute").await?, "per_minute")?;
        let max_backlog = get("max_backlog")
            .await?
            .trim()
            .parse::<u64>()
            .map_err(|_| anyhow::anyhow!("variable max_backlog must be a whole number (0 = unlimited)"))?;
        let admin_token = Some(get("admin_token").await?).filter(|t| !t.is_empty());
        let prefix = get("key_prefix").await?;
        Ok(Config {
            redis_address,
            limits: Limits { per_second, per_minute },
            max_backlog,
            admin_token,
            keys: Keys::new(&prefix, LOG_KEY),
        })
    }
}

async fn get(name: &str) -> anyhow::Result<String> {
    variables::get(name).await.map_err(|e| anyhow::anyhow!("variable {name}: {e:?}"))
}

fn quota(value: &str, name: &str) -> anyhow::Result<u32> {
    match value.trim().parse::<u32>() {
        Ok(n) if n <= MAX_QUOTA => Ok(n),
        _ => anyhow::bail!("variable {name} must be a whole number from 0 to {MAX_QUOTA}, not {value:?}"),
    }
}
