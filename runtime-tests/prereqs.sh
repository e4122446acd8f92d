# Sourced by start.sh and test.sh: installs what a fresh machine lacks, and says nothing when
# everything is already there (so a second run installs nothing and prints nothing about it).
#
#   need_wasm_target          the wasm32-wasip2 Rust target (rustup target add)
#   need_commands CMD=PKG...  each command CMD on the PATH, else Debian package PKG is installed:
#                             with apt-get when running as root, otherwise one line says what to
#                             run, and the script exits 1
#
# Set `prereqs_tag` (e.g. "test.sh") before sourcing: it starts every line printed here.

prereqs_say() { echo "${prereqs_tag:-prereqs}: $*" >&2; }

need_wasm_target() {
  command -v rustup >/dev/null || {
    command -v cargo >/dev/null && rustc --print target-list 2>/dev/null | grep -qx wasm32-wasip2 \
      && [ -d "$(rustc --print sysroot)/lib/rustlib/wasm32-wasip2" ] && return 0
    prereqs_say "the wasm32-wasip2 Rust target is missing and rustup is not installed: install Rust with rustup, then run: rustup target add wasm32-wasip2"
    exit 1
  }
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 && return 0
  prereqs_say "installing the Rust target wasm32-wasip2 (rustup target add wasm32-wasip2)"
  rustup target add wasm32-wasip2 >&2
}

need_commands() {
  local pair packages=()
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || packages+=("${pair#*=}")
  done
  [ ${#packages[@]} -eq 0 ] && return 0
  # One package may provide several commands (redis-server and redis-cli).
  mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    prereqs_say "missing ${packages[*]}; install with: sudo apt-get install -y ${packages[*]} (or your system's package manager), then run this again"
    exit 1
  fi
  prereqs_say "installing ${packages[*]} (apt-get install -y ${packages[*]})"
  # The package lists of a fresh machine may be empty or stale: update them first.
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >&2
}
