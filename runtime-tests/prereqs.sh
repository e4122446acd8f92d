# Sourced by start.sh and test.sh: installs what a fresh machine lacks, and says nothing when
# everything is already there (so a second run installs nothing and prints nothing about it).
#
#   need_wasm_target          the wasm32-wasip2 Rust target (rustup target add)
#   need_lint_tools           rustfmt and clippy (rustup component add), for test.sh's checks
#   need_commands CMD=PKG...  each command CMD on the PATH, else Debian package PKG is installed:
#                             with apt-get when running as root, otherwise one line says what to
#                             run, and the script exits 1
#   need_schemathesis         schemathesis $SCHEMATHESIS_VERSION (PyPI) in a venv under
#                             target/schemathesis-venv, for runtime-tests/tests/e2e/schemathesis.rs
#   need_standardwebhooks     the stock Standard Webhooks verifier, standardwebhooks
#                             $STANDARDWEBHOOKS_VERSION (PyPI), in a venv under target/webhooks-venv,
#                             for runtime-tests/tests/e2e/deliveries.rs
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

need_lint_tools() {
  cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 && return 0
  command -v rustup >/dev/null || {
    prereqs_say "rustfmt or clippy is missing and rustup is not installed: install them with your Rust toolchain"
    exit 1
  }
  prereqs_say "installing rustfmt and clippy (rustup component add rustfmt clippy)"
  rustup component add rustfmt clippy >&2
}

need_commands() {
  local pair packages=()
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || packages+=("${pair#*=}")
  done
  [ ${#packages[@]} -eq 0 ] && return 0
  # One package may provide several commands (redis-server and redis-cli).
  mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
  install_packages "${packages[@]}"
}

install_packages() {
  local packages=("$@")
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    prereqs_say "missing ${packages[*]}; install with: sudo apt-get install -y ${packages[*]} (or your system's package manager), then run this again"
    exit 1
  fi
  prereqs_say "installing ${packages[*]} (apt-get install -y ${packages[*]})"
  # The package lists of a fresh machine may be empty or stale: update them first.
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >&2
}

# One version, so every machine runs the same checks; bump it on purpose.
SCHEMATHESIS_VERSION=4.32.5

# `need_pip_tool VENV PACKAGE VERSION`: PACKAGE==VERSION (PyPI) in the venv VENV, made afresh
# when the version installed there is another (or none).
need_pip_tool() {
  local venv=$1 package=$2 version=$3
  "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('$package') == '$version'" 2>/dev/null \
    && return 0
  need_commands python3=python3
  # Debian splits venv's pip bootstrap into its own package.
  python3 -c 'import ensurepip, venv' 2>/dev/null || install_packages python3-venv
  prereqs_say "installing $package $version into $venv (python3 -m venv; pip install $package==$version)"
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$package==$version" >&2
}

need_schemathesis() { need_pip_tool target/schemathesis-venv schemathesis "$SCHEMATHESIS_VERSION"; }

STANDARDWEBHOOKS_VERSION=1.3.0

need_standardwebhooks() { need_pip_tool target/webhooks-venv standardwebhooks "$STANDARDWEBHOOKS_VERSION"; }
