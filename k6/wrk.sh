#!/usr/bin/env bash
# k6/wrk.sh [status|seats|holds|all]: the server's own ceiling with wrk
# (a C load generator, much cheaper per request than k6), one fresh server
# (k6/lib.sh: release build, private copy, fresh SQLite database, load-test
# settings, 127.0.0.1) per benchmark:
#
#   status  GET /api/v1/queue/status with one ACTIVE token (wrk -H)
#   seats   GET /api/v1/concerts/{id}/seats of a 50-seat concert (wrk -H)
#   holds   POST /api/v1/reservations, durable (CONCERT_DURABILITY=sync,
#           SQLite): every request a different seat of 100,000-seat concerts,
#           1,000 members with ACTIVE tokens rotated (k6/wrk/hold.lua), the
#           server run with CONCERT_MAX_SEATS_PER_MEMBER=1000
#
# Environment: WRK_CONNECTIONS (256), WRK_THREADS (2), WRK_DURATION (20s),
# RESULTS=DIR (default /tmp/wrk-<time>), PERF=1 to also run
# `perf record -F 999 -g -p <server> -- sleep PERF_SECONDS` (default 20)
# while wrk runs (wrk then runs PERF_SECONDS + 10 s; perf starts 5 s in).
set -uo pipefail
WHAT="${1:-all}"
# shellcheck source=k6/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$ROOT/k6"
CONNS="${WRK_CONNECTIONS:-256}"
THREADS="${WRK_THREADS:-2}"
DURATION="${WRK_DURATION:-20s}"
PERF_SECONDS="${PERF_SECONDS:-20}"
[ "${PERF:-0}" = "1" ] && DURATION="$((PERF_SECONDS + 10))s"
RESULTS="${RESULTS:-/tmp/wrk-$(date -u +%Y%m%dT%H%M%S)}"
mkdir -p "$RESULTS"
TMP="$(mktemp -d -t concert-wrk.XXXXXX)"
SERVER_PID=""
trap 'stop_server; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

if ! command -v wrk >/dev/null 2>&1; then
  echo "== wrk missing: apt-get install -y wrk" >&2
  (apt-get install -y wrk || (apt-get update && apt-get install -y wrk)) >&2 || exit 1
fi
build_server "$TMP/concert-server" || exit 1
ulimit -n 65536 2>/dev/null || true

# bench NAME wrk-args...: runs wrk (and perf) against the running server.
bench() {
  local name="$1"
  shift
  local out="$RESULTS/$name"
  mkdir -p "$out"
  echo "== $name: $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out/machine.log"
  local perf_pid=""
  if [ "${PERF:-0}" = "1" ]; then
    (sleep 5; exec perf record -F 999 -g -p "$SERVER_PID" -o "$out/perf.data" -- sleep "$PERF_SECONDS") \
      >"$out/perf-record.log" 2>&1 &
    perf_pid=$!
  fi
  echo "== wrk -t$THREADS -c$CONNS -d$DURATION --latency $*" | tee "$out/wrk.txt"
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" 2>&1 | tee -a "$out/wrk.txt"
  top -b -n 1 -o %CPU -w 200 | sed -n '1,15p' >>"$out/machine.log"
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid"
    perf report -i "$out/perf.data" --stdio --no-children 2>/dev/null | head -80 >"$out/perf-report.txt"
    perf report -i "$out/perf.data" --stdio --no-children -g none --percent-limit 0.3 2>/dev/null \
      | grep -v '^$' >"$out/perf-flat.txt"
    echo "== perf: $out/perf-report.txt, $out/perf-flat.txt"
  fi
}

fresh_server() {
  stop_server
  rm -f "$TMP"/k6.db*
  start_server "$TMP/concert-server" "$TMP" || exit 1
}

PREP="python3 $HERE/wrk/prepare.py"
if [ "$WHAT" = status ] || [ "$WHAT" = all ]; then
  fresh_server
  token="$($PREP "$BASE_URL" "$CONCERT_ADMIN_KEY" token)" || exit 1
  bench status -H "X-Queue-Token: $token" "$BASE_URL/api/v1/queue/status"
fi
if [ "$WHAT" = seats ] || [ "$WHAT" = all ]; then
  fresh_server
  read -r concert token < <($PREP "$BASE_URL" "$CONCERT_ADMIN_KEY" seats 50) || exit 1
  curl -s -H "X-Queue-Token: $token" "$BASE_URL/api/v1/concerts/$concert/seats" | head -c 200 >"$RESULTS/seats-sample.json"
  bench seats -H "X-Queue-Token: $token" "$BASE_URL/api/v1/concerts/$concert/seats"
fi
if [ "$WHAT" = holds ] || [ "$WHAT" = all ]; then
  export CONCERT_MAX_SEATS_PER_MEMBER=1000
  fresh_server
  # 12 x 100,000 seats: enough for 30 s at 40,000 holds/s.
  $PREP "$BASE_URL" "$CONCERT_ADMIN_KEY" holds 1000 12 100000 "$TMP/holds.txt" || exit 1
  export HOLD_DATA="$TMP/holds.txt" WRK_THREADS="$THREADS"
  bench holds -s "$HERE/wrk/hold.lua" "$BASE_URL"
  curl -s "$BASE_URL/metrics" | grep -E '^(holds_created_total|holds_live) ' | tee "$RESULTS/holds/server-metrics.txt"
fi
echo "== results in $RESULTS"
