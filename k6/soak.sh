#!/usr/bin/env bash
# k6/soak.sh: the HTTP soak of docs/PERFORMANCE.md ("A season in bounded
# memory"). One fresh server (k6/lib.sh: release build, fresh SQLite
# database, CONCERT_DURABILITY=sync) with CONCERT_FINISHED_RETENTION=1s;
# wrk holds a seat and cancels it (k6/wrk/hold_cancel.lua), over and over,
# for SOAK_DURATION (5m); the server's resident memory (VmRSS) is sampled
# every 10 s into rss.csv. Prints the samples, the wrk summary and the
# ratio of the last sample to the sample at 1 minute.
#
# Environment: SOAK_DURATION (5m), WRK_CONNECTIONS (64), WRK_THREADS (2),
# RESULTS=DIR (default /tmp/soak-<time>).
set -uo pipefail
# shellcheck source=k6/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$ROOT/k6"
DURATION="${SOAK_DURATION:-5m}"
CONNS="${WRK_CONNECTIONS:-64}"
THREADS="${WRK_THREADS:-2}"
RESULTS="${RESULTS:-/tmp/soak-$(date -u +%Y%m%dT%H%M%S)}"
mkdir -p "$RESULTS"
TMP="$(mktemp -d -t concert-soak.XXXXXX)"
SERVER_PID=""
SAMPLER=""
trap '[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null; stop_server; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

command -v wrk >/dev/null 2>&1 || apt-get install -y wrk >&2 || exit 1
build_server "$TMP/concert-server" || exit 1
export CONCERT_FINISHED_RETENTION="${CONCERT_FINISHED_RETENTION:-1s}"
export CONCERT_MAX_SEATS_PER_MEMBER=1000
export CONCERT_TOKEN_TTL="${CONCERT_TOKEN_TTL:-1h}"
start_server "$TMP/concert-server" "$TMP" || exit 1
python3 "$HERE/wrk/prepare.py" "$BASE_URL" "$CONCERT_ADMIN_KEY" holds 256 12 100000 "$TMP/holds.txt" || exit 1

echo "seconds,vmrss_kib" >"$RESULTS/rss.csv"
(
  start=$(date +%s)
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null)
    echo "$(( $(date +%s) - start )),${rss:-0}" >>"$RESULTS/rss.csv"
    sleep 10
  done
) &
SAMPLER=$!
echo "== $(date -u +%FT%TZ) wrk -t$THREADS -c$CONNS -d$DURATION hold then cancel; load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$RESULTS/wrk.txt"
HOLD_DATA="$TMP/holds.txt" WRK_THREADS="$THREADS" \
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$HERE/wrk/hold_cancel.lua" "$BASE_URL" 2>&1 | tee -a "$RESULTS/wrk.txt"
kill "$SAMPLER" 2>/dev/null
SAMPLER=""
curl -s "$BASE_URL/metrics" | grep -E '^(holds_created_total|holds_live|reservations_in_memory) ' | tee "$RESULTS/server-metrics.txt"
cat "$RESULTS/rss.csv"
python3 - "$RESULTS/rss.csv" <<'PY'
import csv, sys
rows = [(int(r["seconds"]), int(r["vmrss_kib"])) for r in csv.DictReader(open(sys.argv[1])) if int(r["vmrss_kib"]) > 0]
at_minute = min(rows, key=lambda r: abs(r[0] - 60))
last = rows[-1]
print(f"VmRSS at {at_minute[0]} s: {at_minute[1]/1024:.1f} MiB; last, at {last[0]} s: {last[1]/1024:.1f} MiB; last / 1 minute = {last[1]/at_minute[1]:.3f}")
PY
echo "== results in $RESULTS"
