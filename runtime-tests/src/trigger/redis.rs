//! The Redis trigger, as Spin 4.1 runs it (crates/trigger-redis/src/lib.rs): one subscriber per address for all the channels
//! mapped there; messages handled one at a time per address, each in a fresh instance; a
//! handler error is logged, not retried; when the subscription drops, the trigger fails and
//! the process exits (Spin does this by design: a supervisor restarts it). At shutdown a
//! listener takes no new message and returns once the one it is handling is done.

use super::Prepared;
use crate::Shutdown;
use crate::manifest::App;
use anyhow::Context;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Subscribes every address's channels, then returns the running listeners.
pub async fn subscribe_all(
    app: &App,
    components: &HashMap<String, Arc<Prepared>>,
    shutdown: &Shutdown,
) -> anyhow::Result<JoinSet<anyhow::Result<()>>> {
    // address -> channel -> components
    let mut by_address: BTreeMap<String, BTreeMap<String, Vec<Arc<Prepared>>>> = BTreeMap::new();
    for (address, channel, id) in &app.redis_triggers {
        let prepared = components.get(id).with_context(|| format!("no component {id:?}"))?.clone();
        prepared.redis()?;
        by_address.entry(address.clone()).or_default().entry(channel.clone()).or_default().push(prepared);
    }
    let mut listeners = JoinSet::new();
    for (address, channels) in by_address {
        let client =
            redis::Client::open(address.as_str()).with_context(|| format!("invalid Redis address {address:?}"))?;
        let mut pubsub =
            client.get_async_pubsub().await.with_context(|| format!("connecting to Redis at {address}"))?;
        for channel in channels.keys() {
            pubsub.subscribe(channel).await.with_context(|| format!("subscribing to {channel:?} on {address}"))?;
        }
        let shutdown = shutdown.clone();
        let working = shutdown.working();
        listeners.spawn(async move {
            let _working = working;
            let mut messages = pubsub.on_message();
            let mut stopped = std::pin::pin!(shutdown.stopped());
            loop {
                // Not raced with the handler below: a message taken is handled to the end
                // (within the host's grace), so its instance is never dropped mid-call.
                let message = tokio::select! {
                    biased;
                    () = &mut stopped => return Ok(()),
                    message = messages.next() => message,
                };
                let Some(message) = message else { break };
                let channel = message.get_channel_name().to_string();
                let payload = message.get_payload_bytes().to_vec();
                // The channel's components run side by side, each in a fresh instance
                // (trigger-redis lib.rs `handle_message`: `join_all`).
                let handlers = channels.get(&channel).into_iter().flatten().map(|prepared| async {
                    if let Err(e) = handle(prepared, payload.clone()).await {
                        eprintln!(
                            "spin-host: component {:?} failed on a message on {channel:?}: {e:#}",
                            prepared.config.id
                        );
                    }
                });
                // The span Spin's `#[instrument]` opens on each message (`handle_message`).
                let span = tracing::info_span!(
                    "spin_trigger_redis.handle_message",
                    "otel.name" = format!("{channel} receive"),
                    "otel.kind" = "consumer",
                    "messaging.operation" = "receive",
                    "messaging.system" = "redis"
                );
                futures::future::join_all(handlers).instrument(span).await;
            }
            if shutdown.is_stopping() {
                return Ok(());
            }
            Err(anyhow::anyhow!("disconnected from Redis at {address}"))
        });
    }
    Ok(listeners)
}

async fn handle(prepared: &Prepared, payload: Vec<u8>) -> anyhow::Result<()> {
    let mut store = prepared.store();
    let instance = prepared.redis()?.instantiate_async(&mut store).await?;
    let result = store
        .run_concurrent(async move |accessor| {
            instance.spin_redis_inbound_redis().call_handle_message(accessor, payload).await
        })
        .await??;
    result.map_err(|e| anyhow::anyhow!("handler returned {e:?}"))
}
