//! How a script reaches Redis through Spin's outbound Redis: `FCALL` of its function in the
//! library (`task_core::scripts::library`), loading the library when Redis answers "Function
//! not found", and `EVALSHA`/`EVAL` where Redis refuses functions (see `task_core::scripts`).

use spin_sdk::redis::{Connection, Error, RedisParameter, RedisResult};
use std::cell::Cell;
use task_core::scripts::{Script, is_function_missing, is_noscript, is_refusal, library};

thread_local! {
    /// Whether this instance's Redis refused functions (so it calls scripts instead).
    static FUNCTIONS_REFUSED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `script` with `args` (ARGV from 1: the shared header, then the script's own).
pub async fn eval(conn: &Connection, script: &Script, args: &[&str]) -> Result<Vec<RedisResult>, Error> {
    if !FUNCTIONS_REFUSED.get() {
        match conn.execute("FCALL", params(script.function(), args)).await {
            Err(Error::Other(message)) if is_function_missing(&message) => {
                if load_library(conn).await {
                    return conn.execute("FCALL", params(script.function(), args)).await;
                }
                FUNCTIONS_REFUSED.set(true);
            }
            Err(Error::Other(message)) if is_refusal(&message) => FUNCTIONS_REFUSED.set(true),
            reply => return reply,
        }
    }
    let (text, sha) = script.compiled();
    match conn.execute("EVALSHA", params(sha, args)).await {
        Err(Error::Other(message)) if is_noscript(&message) => conn.execute("EVAL", params(text, args)).await,
        reply => reply,
    }
}

/// Loads the library; whether it is there now (loaded, or already loaded by another replica).
async fn load_library(conn: &Connection) -> bool {
    match conn.execute("FUNCTION", vec![binary("LOAD"), binary(&library().1)]).await {
        Ok(_) => true,
        Err(Error::Other(message)) => message.contains("already exists"),
        Err(_) => false,
    }
}

fn binary(text: &str) -> RedisParameter {
    RedisParameter::Binary(text.as_bytes().to_vec())
}

/// `FCALL`/`EVALSHA`/`EVAL` arguments: the function, SHA-1 or text, no keys, then `args`.
fn params(script: &str, args: &[&str]) -> Vec<RedisParameter> {
    let mut params = Vec::with_capacity(args.len() + 2);
    params.push(binary(script));
    params.push(RedisParameter::Int64(0));
    params.extend(args.iter().map(|a| binary(a)));
    params
}
