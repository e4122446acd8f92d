#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 5), starting from its seed
# corpus (fuzz/corpus/<target>/); exits 1 if any target crashed, naming it and the input it
# saved under fuzz/artifacts/<target>/. Installs cargo-fuzz when it is missing, and says
# nothing about it when it is there. The targets are those `cargo fuzz list` names, so a new
# one needs only its [[bin]] in Cargo.toml, its file and its corpus (README.md).
#
#   bash fuzz/run.sh 5      the smoke run of runtime-tests/test.sh
#   bash fuzz/run.sh 600    ten minutes a target
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-5}"

say() { echo "fuzz/run.sh: $*" >&2; }

# One version, so every machine fuzzes alike; bump it on purpose.
cargo_fuzz_version=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]; then
  say "installing cargo-fuzz $cargo_fuzz_version (cargo install cargo-fuzz --version $cargo_fuzz_version --locked)"
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --quiet
fi

# cargo fuzz needs nightly-only flags (-Zsanitizer=address and the coverage passes); the only
# toolchain here is stable, which accepts them with RUSTC_BOOTSTRAP=1. The stable
# toolchain ships the AddressSanitizer runtime they link.
export RUSTC_BOOTSTRAP=1

mapfile -t targets < <(cargo fuzz list)
# One build for all targets; `cargo fuzz run` then finds them built.
cargo fuzz build

failed=()
for target in "${targets[@]}"; do
  # libFuzzer adds what it learns to the first directory: a scratch copy under target/, so
  # the committed seeds stay as they are.
  work="$PWD/target/corpus/$target"
  mkdir -p "$work" "corpus/$target"
  say "$target: ${seconds}s"
  # RUST_LIB_BACKTRACE=0: no backtrace of cargo fuzz itself when a target fails.
  if ! RUST_LIB_BACKTRACE=0 cargo fuzz run "$target" "$work" "$PWD/corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1 \
      > "target/$target.log" 2>&1; then
    failed+=("$target")
    # What failed (a panic's message, or the sanitizer's report), then where the input went.
    { grep -m1 -A4 -E 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' "target/$target.log"; echo "…"
      tail -n 12 "target/$target.log"; } >&2
  else
    grep -E '^stat::number_of_executed_units' "target/$target.log" | sed "s/^/fuzz\/run.sh: $target: /" >&2 || true
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  say "crashed: ${failed[*]} (inputs under fuzz/artifacts/; replay one with: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>)"
  exit 1
fi
say "${#targets[@]} targets, ${seconds}s each: no crash"
