//! `spin:redis@3.0.0` outbound, as Spin's factor-outbound-redis/src/host.rs does it: the
//! allowed-host check, a NEW connection for every `Connection::open` (`establish_connection`),
//! owned by the resource and closed when the guest drops it or the instance ends, with the
//! redis crate's defaults (no connection or response timeout); and Redis replies converted to
//! `redis-result`s in one place (`flatten`). Each call runs in the span Spin's `#[instrument]`
//! opens for it (names and eager fields as there; see main.rs for what a span costs).

use super::Ctx;
use super::spin::redis::redis::{self, Error, RedisParameter, RedisResult};
use ::redis::AsyncConnectionConfig;
use ::redis::aio::MultiplexedConnection;
use tracing::instrument;
use wasmtime::component::{Accessor, HasSelf, Resource};

/// Spin's per-instance table of Redis connections holds this many (factor-outbound-redis
/// lib.rs: `Table::new(1024)`); one more is `TooManyConnections`.
const MAX_CONNECTIONS_PER_INSTANCE: usize = 1024;

/// An open connection, the guest's own.
pub struct Connection {
    conn: MultiplexedConnection,
}

impl redis::Host for Ctx {}

impl redis::HostConnection for Ctx {
    fn drop(&mut self, rep: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        self.redis_connections = self.redis_connections.saturating_sub(1);
        Ok(())
    }
}

/// A handle on the connection (a cheap clone), so that the call can await outside `with`.
fn conn<U>(
    accessor: &Accessor<U, HasSelf<Ctx>>,
    rep: &Resource<Connection>,
) -> wasmtime::Result<MultiplexedConnection> {
    accessor.with(|mut view| Ok(view.get().table.get(rep)?.conn.clone()))
}

async fn run(mut conn: MultiplexedConnection, cmd: ::redis::Cmd) -> Result<::redis::Value, Error> {
    cmd.query_async::<::redis::Value>(&mut conn).await.map_err(other_error)
}

fn other_error(e: ::redis::RedisError) -> Error {
    Error::Other(e.to_string())
}

impl<U> redis::HostConnectionWithStore<U> for HasSelf<Ctx> {
    #[instrument(name = "spin_outbound_redis.open_connection", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    async fn open(
        accessor: &Accessor<U, Self>,
        address: String,
    ) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        let (allowed, open) = accessor.with(|mut view| {
            let ctx = view.get();
            (ctx.component.allowed_outbound_hosts.check_url(&address, "redis"), ctx.redis_connections)
        });
        if !allowed {
            return Ok(Err(Error::InvalidAddress));
        }
        if open >= MAX_CONNECTIONS_PER_INSTANCE {
            return Ok(Err(Error::TooManyConnections));
        }
        let Ok(client) = ::redis::Client::open(address.as_str()) else {
            return Ok(Err(Error::InvalidAddress));
        };
        // `AsyncConnectionConfig::new()`, as Spin's `establish_connection`: no timeouts, so a
        // Redis that does not answer keeps the call waiting (the guest must bound its waits).
        let conn = match client.get_multiplexed_async_connection_with_config(&AsyncConnectionConfig::new()).await {
            Ok(conn) => conn,
            Err(e) => return Ok(Err(other_error(e))),
        };
        let rep = accessor.with(|mut view| {
            let ctx = view.get();
            ctx.redis_connections += 1;
            ctx.table.push(Connection { conn })
        })?;
        Ok(Ok(rep))
    }

    #[instrument(name = "spin_outbound_redis.publish", skip_all, fields(otel.kind = "client", db.system.name = "redis", otel.name = "PUBLISH"))]
    async fn publish(
        accessor: &Accessor<U, Self>,
        self_: Resource<Connection>,
        channel: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let conn = conn(accessor, &self_)?;
        Ok(run(conn, ::redis::cmd("PUBLISH").arg(channel).arg(payload).clone()).await.map(|_| ()))
    }

    #[instrument(name = "spin_outbound_redis.get", skip_all, fields(otel.kind = "client", db.system.name = "redis", otel.name = "GET"))]
    async fn get(
        accessor: &Accessor<U, Self>,
        self_: Resource<Connection>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let conn = conn(accessor, &self_)?;
        Ok(match run(conn, ::redis::cmd("GET").arg(key).clone()).await {
            Ok(::redis::Value::Nil) => Ok(None),
            Ok(::redis::Value::BulkString(b)) => Ok(Some(b)),
            Ok(_) => Err(Error::TypeError),
            Err(e) => Err(e),
        })
    }

    #[instrument(name = "spin_outbound_redis.set", skip_all, fields(otel.kind = "client", db.system.name = "redis", otel.name = "SET"))]
    async fn set(
        accessor: &Accessor<U, Self>,
        self_: Resource<Connection>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let conn = conn(accessor, &self_)?;
        Ok(run(conn, ::redis::cmd("SET").arg(key).arg(value).clone()).await.map(|_| ()))
    }

    #[instrument(name = "spin_outbound_redis.incr", skip_all, fields(otel.kind = "client", db.system.name = "redis", otel.name = "INCRBY"))]
    async fn incr(
        accessor: &Accessor<U, Self>,
        self_: Resource<Connection>,
        key: String,
    ) -> wasmtime::Result<Result<i64, Error>> {
        let conn = conn(accessor, &self_)?;
        Ok(int_reply(run(conn, ::redis::cmd("INCR").arg(key).clone()).await))
    }

    #[instrument(name = "spin_outbound_redis.del", skip_all, fields(otel.kind = "client", db.system.name = "redis", otel.name = "DEL"))]
    async fn del(
        accessor: &Accessor<U, Self>,
        self_: Resource<Connection>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        let conn = conn(accessor, &self_)?;
        Ok(int_reply(run(conn, ::redis::cmd("DEL").arg(keys).clone()).await).map(|n| n as u32))
    }

    #[instrument(name = "spin_outbound_redis.sadd", skip_all, fields(otel.kind = "client", db.system.name = "redis", otel.name = "SADD"))]
    async fn sadd(
        accessor: &Accessor<U, Self>,
        self_: Resource<Connection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        let conn = conn(accessor, &self_)?;
        Ok(int_reply(run(conn, ::redis::cmd("SADD").arg(key).arg(values).clone()).await).map(|n| n as u32))
    }

    #[instrument(name = "spin_outbound_redis.smembers", skip_all, fields(otel.kind = "client", db.system.name = "redis", otel.name = "SMEMBERS"))]
    async fn smembers(
        accessor: &Accessor<U, Self>,
        self_: Resource<Connection>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, Error>> {
        let conn = conn(accessor, &self_)?;
        Ok(run(conn, ::redis::cmd("SMEMBERS").arg(key).clone()).await.map(|v| {
            flatten(v)
                .into_iter()
                .filter_map(|r| match r {
                    RedisResult::Binary(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    RedisResult::Status(s) => Some(s),
                    _ => None,
                })
                .collect()
        }))
    }

    #[instrument(name = "spin_outbound_redis.srem", skip_all, fields(otel.kind = "client", db.system.name = "redis", otel.name = "SREM"))]
    async fn srem(
        accessor: &Accessor<U, Self>,
        self_: Resource<Connection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        let conn = conn(accessor, &self_)?;
        Ok(int_reply(run(conn, ::redis::cmd("SREM").arg(key).arg(values).clone()).await).map(|n| n as u32))
    }

    #[instrument(name = "spin_outbound_redis.execute", skip_all, fields(otel.kind = "client", db.system.name = "redis", otel.name = format!("{}", command)))]
    async fn execute(
        accessor: &Accessor<U, Self>,
        self_: Resource<Connection>,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<RedisResult>, Error>> {
        let conn = conn(accessor, &self_)?;
        let mut cmd = ::redis::cmd(&command);
        for argument in arguments {
            match argument {
                RedisParameter::Int64(n) => cmd.arg(n),
                RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        Ok(run(conn, cmd).await.and_then(|v| {
            if let ::redis::Value::Map(_) = v {
                // What Spin does with RESP3 maps.
                return Err(Error::Other("unsupported RESP3 map reply".to_string()));
            }
            Ok(flatten(v))
        }))
    }
}

fn int_reply(reply: Result<::redis::Value, Error>) -> Result<i64, Error> {
    match reply? {
        ::redis::Value::Int(n) => Ok(n),
        _ => Err(Error::TypeError),
    }
}

/// A Redis reply as Spin hands it to the guest: scalars map one to one, and arrays are
/// flattened (nested ones too) into one list.
pub fn flatten(value: ::redis::Value) -> Vec<RedisResult> {
    let mut out = Vec::new();
    push_flat(value, &mut out);
    out
}

fn push_flat(value: ::redis::Value, out: &mut Vec<RedisResult>) {
    use ::redis::Value as V;
    match value {
        V::Nil => out.push(RedisResult::Nil),
        V::Int(n) => out.push(RedisResult::Int64(n)),
        V::BulkString(b) => out.push(RedisResult::Binary(b)),
        V::SimpleString(s) => out.push(RedisResult::Status(s)),
        V::Okay => out.push(RedisResult::Status("OK".to_string())),
        V::Array(items) | V::Set(items) => items.into_iter().for_each(|v| push_flat(v, out)),
        V::Double(d) => out.push(RedisResult::Binary(d.to_string().into_bytes())),
        V::Boolean(b) => out.push(RedisResult::Int64(b as i64)),
        V::BigNumber(n) => out.push(RedisResult::Binary(n.to_string().into_bytes())),
        V::VerbatimString { text, .. } => out.push(RedisResult::Binary(text.into_bytes())),
        V::Map(pairs) => pairs.into_iter().for_each(|(k, v)| {
            push_flat(k, out);
            push_flat(v, out)
        }),
        V::Attribute { data, .. } => push_flat(*data, out),
        V::Push { data, .. } => data.into_iter().for_each(|v| push_flat(v, out)),
        V::ServerError(e) => out.push(RedisResult::Status(format!("{e:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::redis::Value as V;

    #[test]
    fn nested_arrays_are_flattened_in_order() {
        let reply = V::Array(vec![
            V::BulkString(b"1-0".to_vec()),
            V::Array(vec![V::BulkString(b"f".to_vec()), V::BulkString(b"v".to_vec())]),
            V::Int(7),
            V::Nil,
            V::Okay,
        ]);
        let flat = flatten(reply);
        assert_eq!(flat.len(), 6);
        assert!(matches!(&flat[0], RedisResult::Binary(b) if b == b"1-0"));
        assert!(matches!(&flat[2], RedisResult::Binary(b) if b == b"v"));
        assert!(matches!(flat[3], RedisResult::Int64(7)));
        assert!(matches!(flat[4], RedisResult::Nil));
        assert!(matches!(&flat[5], RedisResult::Status(s) if s == "OK"));
    }
}
