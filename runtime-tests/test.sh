#!/usr/bin/env bash
# The test command (README "Test it"; CI runs exactly this): installs what the tests need when it
# is missing (the wasm32-wasip2 target; redis-server and redis-cli, which the tests start on free
# loopback ports; Debian's chromium and Node.js with npm for the page's browser test), then builds
# the component and runs every test of the workspace. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

prereqs_tag=test.sh
. runtime-tests/prereqs.sh
need_wasm_target
need_commands redis-server=redis-server redis-cli=redis-server chromium=chromium node=nodejs npm=npm

# Incremental state only pays off across edits; a one-shot run would leave gigabytes of it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo build --target wasm32-wasip2 --release
cargo test --workspace "$@"
