#!/usr/bin/env bash
# The test command (README "Test it"; CI runs exactly this): installs what the tests need when it
# is missing (the wasm32-wasip2 target; redis-server and redis-cli, which the tests start on free
# loopback ports; Debian's chromium and Node.js with npm for the page's browser test; schemathesis
# in a venv under target/ for the contract test; cargo-fuzz, by fuzz/run.sh), then checks
# formatting and lints, builds the component, runs every test of the workspace and a short run
# of each fuzz target. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

prereqs_tag=test.sh
. runtime-tests/prereqs.sh
need_wasm_target
need_lint_tools
need_commands redis-server=redis-server redis-cli=redis-server chromium=chromium node=nodejs npm=npm
need_schemathesis
need_standardwebhooks

# Incremental state only pays off across edits; a one-shot run would leave gigabytes of it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Formatting and lints are checks, not habits: the workspace (the component's wasm-only
# entry points included: clippy compiles them natively, see src/lib.rs) and the fuzz targets
# (their own workspace). A second clippy for wasm32 took 3 of CI's ~38 min at a slow hour.
cargo fmt --all --check
(cd fuzz && cargo fmt --check)
cargo clippy --workspace --all-targets -- -D warnings
cargo build --target wasm32-wasip2 --release
cargo test --workspace "$@"
# A few seconds of each fuzz target (fuzz/README.md; a longer run: bash fuzz/run.sh 600).
bash fuzz/run.sh 5
