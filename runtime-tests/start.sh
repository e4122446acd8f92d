#!/usr/bin/env bash
# Starts the app on http://127.0.0.1:3000 on a fresh machine:
#   1. builds the component (what `spin build` runs),
#   2. starts a local redis-server if nothing answers on 127.0.0.1:6379,
#   3. runs `spin up` when the Spin CLI is installed, and the bundled wasmtime host otherwise.
# Extra arguments go to `spin up` / `spin-host` (e.g. --listen 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --target wasm32-wasip2 --release

if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install -y redis-server)" >&2; exit 1; }
  mkdir -p .spin
  echo "starting redis-server on 127.0.0.1:6379 (append-only file in .spin/)" >&2
  redis-server --bind 127.0.0.1 --port 6379 --dir "$PWD/.spin" --appendonly yes --daemonize yes >/dev/null
fi

if command -v spin >/dev/null; then
  exec spin up --runtime-config-file runtime-config.toml --listen 127.0.0.1:3000 "$@"
fi
exec cargo run -p runtime-tests --bin spin-host -- \
  --from spin.toml --runtime-config-file runtime-config.toml --listen 127.0.0.1:3000 "$@"
