#!/usr/bin/env python3
"""k6/samples.py SAMPLES.csv.gz SCENARIO [GCLOG]: where a k6 run's latency tail is.

Reads the samples that `K6_CSV=1 bash k6/run.sh ...` wrote (k6 --out csv,
timestamps in microseconds) and prints, for the scenario's requests (setup
excluded):

- the percentiles of http_req_duration and of each phase (blocked,
  connecting, sending, waiting, receiving): a tail in `waiting` with a fast
  server-side histogram is time the response spent before k6's reader got to
  it; a tail in `receiving` is k6 reading a response it had started;
- per 100 ms window, the requests and the p95, and how the slow requests
  (> 5 ms) cluster in time: spread evenly, or in a few windows;
- per request name (the `name` tag) and status: the count, percentiles and
  requests > 5 ms, split into the scenario's first 5 s and the rest, so a
  tail in one route (e.g. token issues waiting for a durable commit) shows
  apart from the others;
- with GCLOG (k6.log of a run with K6_GODEBUG=gctrace=1), the GC cycles.
"""
import csv
import gzip
import re
import sys
from collections import defaultdict

PHASES = ['http_req_duration', 'http_req_blocked', 'http_req_connecting', 'http_req_sending',
          'http_req_waiting', 'http_req_receiving']


def pct(sorted_vals, p):
    if not sorted_vals:
        return float('nan')
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def main():
    path, scenario = sys.argv[1], sys.argv[2]
    gclog = sys.argv[3] if len(sys.argv) > 3 else None
    values = defaultdict(list)
    durations = []  # (timestamp_us, duration_ms)
    named = []  # (timestamp_us, name, status, duration_ms)
    with gzip.open(path, 'rt', newline='') as f:
        rows = csv.DictReader(f)
        for row in rows:
            name = row['metric_name']
            if name not in PHASES or row.get('scenario') != scenario:
                continue
            v = float(row['metric_value'])
            values[name].append(v)
            if name == 'http_req_duration':
                durations.append((int(row['timestamp']), v))
                named.append((int(row['timestamp']), row.get('name', ''), row.get('status', ''), v))
    print(f'{len(durations)} {scenario} requests')
    print(f"{'phase (ms)':22} {'p50':>8} {'p90':>8} {'p95':>8} {'p99':>8} {'max':>9}")
    for name in PHASES:
        vals = sorted(values[name])
        print(f'{name:22} ' + ' '.join(f'{pct(vals, p):8.2f}' for p in (50, 90, 95, 99)) + f' {vals[-1] if vals else 0:9.2f}')

    durations.sort()
    t0 = durations[0][0]
    windows = defaultdict(list)
    for ts, d in durations:
        windows[(ts - t0) // 100_000].append(d)
    slow_total = sum(1 for _, d in durations if d > 5)
    per_window = sorted(((sum(1 for d in ds if d > 5), w, len(ds), pct(sorted(ds), 95)) for w, ds in windows.items()),
                        reverse=True)
    n_windows = len(windows)
    print(f'\n{n_windows} non-empty windows of 100 ms; requests > 5 ms: {slow_total} ({100.0 * slow_total / len(durations):.2f}%)')
    acc = 0
    for k, (slow, _, _, _) in enumerate(per_window):
        acc += slow
        if acc >= 0.8 * slow_total:
            print(f'80% of the slow requests fall in {k + 1} of {n_windows} windows ({100.0 * (k + 1) / n_windows:.1f}%)')
            break
    counts = sorted(len(ds) for ds in windows.values())
    print(f'requests per non-empty 100 ms window: p10 {pct(counts, 10)}, p50 {pct(counts, 50)}, p90 {pct(counts, 90)}, max {counts[-1]}')
    print('the 15 windows with the most slow requests (t from the first request, s):')
    for slow, w, n, p95 in per_window[:15]:
        print(f'  t={w / 10:6.1f}  requests {n:5d}  > 5 ms {slow:5d}  p95 {p95:8.2f} ms')

    print('\nper request name and status (first 5 s of the scenario / the rest):')
    print(f"{'name status':34} {'count':>7} {'p50':>7} {'p95':>7} {'p99':>8} {'>5ms 0-5s':>10} {'>5ms rest':>10}")
    groups = defaultdict(list)
    for ts, name, status, d in named:
        groups[(name, status)].append((ts, d))
    for (name, status), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        ds = sorted(d for _, d in items)
        early = sum(1 for ts, d in items if d > 5 and ts - t0 < 5_000_000)
        late = sum(1 for ts, d in items if d > 5 and ts - t0 >= 5_000_000)
        print(f'{(name + " " + status)[:34]:34} {len(ds):7d} {pct(ds, 50):7.2f} {pct(ds, 95):7.2f} {pct(ds, 99):8.2f}'
              f' {early:10d} {late:10d}')
    print(f'(requests > 5 ms as a share of all {len(durations)}: first 5 s '
          f'{100.0 * sum(1 for ts, d in durations if d > 5 and ts - t0 < 5_000_000) / len(durations):.2f}%, rest '
          f'{100.0 * sum(1 for ts, d in durations if d > 5 and ts - t0 >= 5_000_000) / len(durations):.2f}%)')

    if gclog:
        # gctrace: "gc N @T s P%: ... ms clock, ..." ; T is seconds since k6 started.
        cycles = []
        pat = re.compile(r'^gc (\d+) @([\d.]+)s \d+%: ([\d.+]+) ms clock, ([\d.+/]+) ms cpu, (\d+)->(\d+)->(\d+) MB')
        with open(gclog, errors='replace') as f:
            for line in f:
                m = pat.match(line.strip())
                if m:
                    clock = sum(float(x) for x in m.group(3).split('+'))
                    cycles.append((float(m.group(2)), clock, int(m.group(5)), int(m.group(7))))
        print(f'\n{len(cycles)} GC cycles in the k6 log; clock ms and heap MB (start -> live):')
        for start, clock, h0, live in cycles:
            print(f'  @{start:7.2f}s  {clock:8.1f} ms  {h0} -> {live} MB')


if __name__ == '__main__':
    main()
