#!/usr/bin/env bash
# k6/capacity_search.sh OP [START_RATE] [MAX_RATE]: the highest constant
# arrival rate OP sustains (k6/capacity.js passes: p99 < 50 ms, no error, no
# dropped iteration). Doubles from START_RATE until a run fails (or MAX_RATE),
# then bisects STEPS times (default 3) between the last pass and the first
# failure. Every step is one k6/run.sh run (fresh server and database).
#
#   bash k6/capacity_search.sh status 2000
#   bash k6/capacity_search.sh hold 1000 40000
#
# Environment: DURATION (default 20s) and WARMUP (5s) per step, STEPS,
# RESULTS=DIR (default /tmp/capacity-OP-<time>) keeps each step's k6 output.
# hold and pay run the server with CONCERT_MAX_SEATS_PER_MEMBER=1000 (each of
# their members takes many seats).
set -uo pipefail
OP="${1:?usage: capacity_search.sh OP [START_RATE] [MAX_RATE]}"
START="${2:-1000}"
MAX="${3:-200000}"
STEPS="${STEPS:-3}"
DURATION="${DURATION:-20s}"
WARMUP="${WARMUP:-5s}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RESULTS="${RESULTS:-/tmp/capacity-$OP-$(date -u +%Y%m%dT%H%M%S)}"
mkdir -p "$RESULTS"
case "$OP" in
  hold | pay) export CONCERT_MAX_SEATS_PER_MEMBER="${CONCERT_MAX_SEATS_PER_MEMBER:-1000}" ;;
esac

# step RATE: runs one step; prints "RATE pass|fail p99 achieved/s"; returns 0 on pass.
step() {
  local rate="$1" dir="$RESULTS/rate-$1" code
  RUN_OUT="$dir" bash "$HERE/run.sh" "$HERE/capacity.js" -e OP="$OP" -e RATE="$rate" \
    -e DURATION="$DURATION" -e WARMUP="$WARMUP" >"$RESULTS/rate-$rate.log" 2>&1
  code=$?
  python3 - "$dir/summary.json" "$OP" "$rate" "$code" <<'EOF' | tee -a "$RESULTS/steps.txt"
import json, sys
path, op, rate, code = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
try:
    m = json.load(open(path))["metrics"]
except Exception as e:
    print(f"{rate:>7}/s  {'ERROR':5}  no summary ({e}); k6 exit {code}")
    sys.exit(0)
d = m.get(f"http_req_duration{{scenario:{op},op:{op}}}", {})
reqs = m.get(f"http_req_failed{{scenario:{op}}}", {})
drop = m.get(f"dropped_iterations{{scenario:{op}}}", {}).get("count", 0)
errs = m.get("op_errors", {}).get("count", 0)
verdict = "pass" if code == 0 else "fail"
print(f"{rate:>7}/s  {verdict:5}  p99={d.get('p(99)', float('nan')):.2f}ms p95={d.get('p(95)', float('nan')):.2f}ms "
      f"med={d.get('med', float('nan')):.3f}ms failed={reqs.get('value', 0):.4%} op_errors={errs} dropped={drop} (k6 exit {code})")
EOF
  [ "$code" -eq 0 ]
}

echo "capacity search for $OP: start $START/s, max $MAX/s, $DURATION per step after $WARMUP warm-up; results in $RESULTS"
pass=0
fail=0
rate="$START"
while :; do
  if step "$rate"; then
    pass="$rate"
    [ "$rate" -ge "$MAX" ] && break
    rate=$((rate * 2))
    [ "$rate" -gt "$MAX" ] && rate="$MAX"
  else
    fail="$rate"
    break
  fi
done
if [ "$fail" -gt 0 ]; then
  for _ in $(seq 1 "$STEPS"); do
    [ $((fail - pass)) -le $((pass / 20 + 1)) ] && break
    rate=$(((pass + fail) / 2))
    if step "$rate"; then pass="$rate"; else fail="$rate"; fi
  done
fi
echo "RESULT $OP: highest passing constant rate ${pass}/s (lowest failing: ${fail}/s; 0 = none found)" | tee -a "$RESULTS/steps.txt"
