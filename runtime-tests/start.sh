#!/usr/bin/env bash
# Runs the app on http://127.0.0.1:3000 and keeps it running:
#   1. builds the component (what `spin build` runs), adding the wasm32-wasip2 target first if
#      it is missing (runtime-tests/prereqs.sh),
#   2. starts a local redis-server if nothing answers at the Redis address (append-only file
#      under .spin/), and restarts it if it exits; installs it first when it is missing and the
#      script runs as root with apt-get (otherwise it says what to install and stops),
#   3. runs `spin up` when the Spin CLI is installed, otherwise the bundled wasmtime host (built
#      once, then its binary is run), and restarts it whenever it exits: Spin exits by design
#      when its Redis subscription drops, so every Redis restart ends the runtime,
#   4. probes GET /healthz every second while it runs. Spin has no timer trigger: the probe is
#      the wake-up that restarts draining when every drainer was down (after a Redis restart,
#      say), so queued tasks run without waiting for the next request.
# Ctrl-C (SIGINT), SIGTERM or SIGHUP stops the runtime and the probe, then a redis-server this
# script started (never one it found running), and exits within ~4 s (the runtime's own grace
# for requests in flight is 3 s).
#
# Options, as flags or environment variables (a flag wins):
#   --listen ADDR       TASK_API_LISTEN       address to serve on (default 127.0.0.1:3000)
#   --redis-url URL     TASK_API_REDIS_URL    the app's Redis: sets SPIN_VARIABLE_REDIS_ADDRESS and the
#                                             key-value store's URL in the runtime config (default
#                                             $SPIN_VARIABLE_REDIS_ADDRESS, else redis://127.0.0.1:6379)
#   --skip-build        TASK_API_SKIP_BUILD=1 run the .wasm already built
#   --host-bin PATH     TASK_API_HOST_BIN     run this spin-host binary, even when Spin is installed
#   --probe-every SECS  TASK_API_PROBE_EVERY  seconds between /healthz probes (default 1; 0 = none)
#   -- ARGS...                                passed on to `spin up` / `spin-host` (e.g. -- --kv-cas lossy);
#                                             so is any argument this script does not know
# Lines the script prints itself go to stderr and start with "start.sh:"; the runtime's output
# is passed through (the task log lines are on its stderr: where spin up 4.1 shows a component's
# stdout, and the bundled host does too).
set -euo pipefail
cd "$(dirname "$0")/.."

listen=${TASK_API_LISTEN:-127.0.0.1:3000}
default_redis_url=redis://127.0.0.1:6379
redis_url=${TASK_API_REDIS_URL:-${SPIN_VARIABLE_REDIS_ADDRESS:-$default_redis_url}}
skip_build=${TASK_API_SKIP_BUILD:-}
host_bin=${TASK_API_HOST_BIN:-}
probe_every=${TASK_API_PROBE_EVERY:-1}
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --listen) listen=$2; shift 2 ;;
    --redis-url) redis_url=$2; shift 2 ;;
    --skip-build) skip_build=1; shift ;;
    --host-bin) host_bin=$2; shift 2 ;;
    --probe-every) probe_every=$2; shift 2 ;;
    --) shift; extra+=("$@"); break ;;
    *) extra+=("$1"); shift ;;
  esac
done

say() { echo "start.sh: $*" >&2; }
prereqs_tag=start.sh
. runtime-tests/prereqs.sh

# host and port of an address; a wildcard listen address is probed on loopback.
addr_host() { local h=${1%:*}; h=${h#[}; h=${h%]}; case $h in 0.0.0.0|'') h=127.0.0.1 ;; ::) h=::1 ;; esac; echo "$h"; }
addr_port() { echo "${1##*:}"; }
probe_host=$(addr_host "$listen")
probe_port=$(addr_port "$listen")
# redis://[user:password@]host[:port][/db]
redis_hostport=${redis_url#*://}
redis_hostport=${redis_hostport##*@}
redis_hostport=${redis_hostport%%/*}
case $redis_hostport in *:*) ;; *) redis_hostport=$redis_hostport:6379 ;; esac
redis_host=$(addr_host "$redis_hostport")
redis_port=$(addr_port "$redis_hostport")

# Whether something accepts TCP connections at host port (bounded: a remote host may not answer).
tcp_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null; }

if [ -z "$skip_build" ]; then
  need_wasm_target
  cargo build --target wasm32-wasip2 --release
fi

if [ -n "$host_bin" ]; then
  runtime=("$host_bin" --from spin.toml)
elif command -v spin >/dev/null; then
  runtime=(spin up)
else
  # Built once here; restarts run the binary, not `cargo run` (which would rebuild-check each time).
  cargo build -p runtime-tests --bin spin-host
  runtime=("${CARGO_TARGET_DIR:-target}/debug/spin-host" --from spin.toml)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/task-api-start.XXXXXX")
runtime_config=runtime-config.toml
if [ "$redis_url" != "$default_redis_url" ]; then
  # The key-value store (the admission ledger) must be the same Redis as the queue.
  runtime_config=$work/runtime-config.toml
  printf '[key_value_store.default]\ntype = "redis"\nurl = "%s"\n' "$redis_url" >"$runtime_config"
fi
redis_db=${redis_url#*://}
case $redis_db in */*) redis_db=${redis_db#*/} ;; *) redis_db=0 ;; esac
case ${redis_db:-0} in
  0) ;;
  *) say "warning: spin.toml's lease-expiry channel names database 0 (__keyspace@0__); $redis_url selects $redis_db" ;;
esac
export SPIN_VARIABLE_REDIS_ADDRESS=$redis_url

# Runs "$@" in the background and again one second after each exit, until this subshell gets
# SIGTERM or SIGINT; then stops the child (SIGINT, the Ctrl-C both `spin up` and spin-host shut down
# cleanly on, then SIGKILL after 10 s). With gate_redis set, waits for Redis to accept
# connections before each start, so a Redis outage is not a loop of failing starts.
# Started as a job of its own (see `background`), so a terminal's Ctrl-C reaches it only
# through stop().
supervise() {
  set +e # a child that fails is expected here, not a reason to stop supervising
  local name=$1 gate_redis=$2
  shift 2
  local child='' stopping='' status
  trap 'stopping=1; [ -n "$child" ] && kill -INT "$child" 2>/dev/null' INT TERM
  while [ -z "$stopping" ]; do
    if [ -n "$gate_redis" ] && ! tcp_open "$redis_host" "$redis_port"; then
      sleep 0.2 & wait $!
      continue
    fi
    "$@" &
    child=$!
    # A stop that arrived between the loop test and the start above.
    [ -n "$stopping" ] && kill -INT "$child" 2>/dev/null
    wait "$child"
    status=$?
    if [ -n "$stopping" ]; then
      # `wait` returned for our own trap; give the child 10 s to finish, then kill it.
      local waited=0
      while kill -0 "$child" 2>/dev/null && [ $waited -lt 50 ]; do sleep 0.2; waited=$((waited + 1)); done
      kill -KILL "$child" 2>/dev/null
      wait "$child" 2>/dev/null
      break
    fi
    say "$name exited (status $status); starting it again in 1 s"
    sleep 1 & wait $!
  done
}

# GET /healthz: the HTTP status, or 000 when nothing answers.
probe_once() {
  if command -v curl >/dev/null; then
    curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$probe_host:$probe_port/healthz" || true
  else
    local line
    line=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
      printf "GET /healthz HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n" "$1" "$2" >&3
      IFS= read -r line <&3 && echo "$line"' _ "$probe_host" "$probe_port" 2>/dev/null) || true
    line=${line#* }
    echo "${line:0:3}" | grep -E '^[0-9]{3}$' || echo 000
  fi
}

# The probe a supervisor (or Kubernetes) would run; it reports only changes of state.
probe_loop() {
  set +e
  trap 'kill "$!" 2>/dev/null; wait; exit 0' INT TERM
  local last='' status
  while :; do
    sleep "$probe_every" & wait $!
    status=$(probe_once)
    if [ "$status" != "$last" ]; then
      say "GET /healthz: $status"
      last=$status
    fi
  done
}

# Runs "$@" as a background job in a process group of its own: a terminal's Ctrl-C goes to the
# foreground group, this script alone, and stop() then ends the jobs in order. (Sharing the
# group, Redis got the Ctrl-C at the same moment as the runtime, whose last requests and drainer
# then failed on a closed connection, and each supervisor saw its child exit before its own
# trap ran, and started it again.) Job control is on only while starting the job, so that
# bash prints no job notices.
background() {
  set -m
  "$@" &
  set +m
}

pids=()
redis_pid=''
stop() {
  set +e
  trap - INT TERM HUP EXIT
  # The runtime first, while Redis still answers its requests in flight; then Redis.
  if [ ${#pids[@]} -gt 0 ]; then kill -TERM "${pids[@]}" 2>/dev/null; wait "${pids[@]}"; fi
  if [ -n "$redis_pid" ]; then kill -TERM "$redis_pid" 2>/dev/null; wait "$redis_pid"; fi
  rm -rf "$work"
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap 'stop; exit 129' HUP
trap stop EXIT

if ! tcp_open "$redis_host" "$redis_port"; then
  case $redis_host in
    127.0.0.1|localhost)
      need_commands redis-server=redis-server
      dir=$PWD/.spin
      [ "$redis_port" = 6379 ] || dir=$PWD/.spin/redis-$redis_port
      mkdir -p "$dir"
      say "starting redis-server on 127.0.0.1:$redis_port (append-only file in ${dir#"$PWD"/})"
      # Kx in its own configuration: keyspace events set at run time (the app's CONFIG SET)
      # are lost when Redis restarts.
      background supervise redis-server '' redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dir" \
        --appendonly yes --appendfsync always --notify-keyspace-events Kx >/dev/null
      redis_pid=$!
      ;;
    *) say "nothing answers at $redis_host:$redis_port yet; the runtime starts once it does" ;;
  esac
fi

say "serving on http://$listen with ${runtime[0]##*/}; Redis $redis_url"
background supervise "${runtime[0]##*/}" 1 "${runtime[@]}" --runtime-config-file "$runtime_config" --listen "$listen" ${extra[@]+"${extra[@]}"}
pids+=($!)
if [ "$probe_every" != 0 ]; then
  background probe_loop
  pids+=($!)
fi

# The jobs never end by themselves: this returns when a signal runs stop().
wait
