//! `spin-host`: runs a Spin app like `spin up` (the flags it supports), for machines without
//! the Spin CLI. See `runtime_tests` for what it implements.

use runtime_tests::host::key_value::CasMode;
use runtime_tests::{HostConfig, run};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: spin-host [--from spin.toml] [--listen 127.0.0.1:3000] [--runtime-config-file FILE]
                 [--variable NAME=VALUE]... [--kv-cas correct|lossy]
Variables may also be set as SPIN_VARIABLE_<NAME> environment variables.";

fn main() -> ExitCode {
    let (config, listen) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("spin-host: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("spin-host: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        run(config, listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spin-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(HostConfig, String), String> {
    let mut manifest = PathBuf::from("spin.toml");
    let mut listen = "127.0.0.1:3000".to_string();
    let mut runtime_config = None;
    let mut flag_vars = HashMap::new();
    let mut cas_mode = CasMode::Correct;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--from" | "-f" => manifest = PathBuf::from(value("--from")?),
            "--listen" => listen = value("--listen")?,
            "--runtime-config-file" => runtime_config = Some(PathBuf::from(value("--runtime-config-file")?)),
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
    Ok((HostConfig { manifest, runtime_config, variables, cas_mode }, listen))
}
