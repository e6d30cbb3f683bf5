#!/usr/bin/env python3
"""Prepares data for the wrk benchmarks (k6/wrk.sh), standard library only.

    prepare.py BASE_URL ADMIN_KEY token              -> prints one ACTIVE queue token
    prepare.py BASE_URL ADMIN_KEY seats SEATS        -> prints "CONCERT_ID TOKEN" (a SEATS-seat concert)
    prepare.py BASE_URL ADMIN_KEY holds MEMBERS CONCERTS SEATS OUT
        -> MEMBERS members with ACTIVE tokens and CONCERTS concerts of SEATS
           seats; writes OUT, read by k6/wrk/hold.lua: line 1 "SEATS", line 2
           the concert ids, then one token per line.
"""
import http.client
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

BASE = urlparse(sys.argv[1])
ADMIN_KEY = sys.argv[2]
_local = {}


def call(method, path, body=None, headers=None, expect=(200, 201)):
    import threading

    conn = _local.get(threading.get_ident())
    if conn is None:
        conn = http.client.HTTPConnection(BASE.hostname, BASE.port, timeout=60)
        _local[threading.get_ident()] = conn
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body)
        hdrs["Content-Type"] = "application/json"
    conn.request(method, "/api/v1" + path, body=data, headers=hdrs)
    resp = conn.getresponse()
    raw = resp.read()
    if resp.status not in expect:
        raise SystemExit(f"{method} {path}: HTTP {resp.status} {raw[:300]!r}")
    return json.loads(raw) if raw else None


def concert(seats, day):
    starts = (datetime.now(timezone.utc) + timedelta(days=day)).isoformat(timespec="seconds")
    body = {"title": f"wrk {day}", "category": "wrk", "venue": "wrk hall", "startsAt": starts,
            "seatCount": seats, "price": 50000}
    return call("POST", "/admin/concerts", body, {"X-Admin-Key": ADMIN_KEY}, (201,))["id"]


def active_member(_):
    key = call("POST", "/members", {"name": "wrk"}, expect=(201,))["memberKey"]
    token = call("POST", "/queue/tokens", headers={"Authorization": f"Bearer {key}"})["token"]
    for _ in range(600):
        if call("GET", "/queue/status", headers={"X-Queue-Token": token})["status"] == "ACTIVE":
            return token
        time.sleep(0.05)
    raise SystemExit("a token was not admitted within 30 s")


def main():
    what = sys.argv[3]
    if what == "token":
        print(active_member(0))
    elif what == "seats":
        print(concert(int(sys.argv[4]), 1), active_member(0))
    elif what == "holds":
        members, concerts, seats, out = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
        with ThreadPoolExecutor(32) as pool:
            tokens = list(pool.map(active_member, range(members)))
        ids = [concert(seats, 1 + i) for i in range(concerts)]
        with open(out, "w") as f:
            f.write(f"{seats}\n{' '.join(map(str, ids))}\n")
            f.write("\n".join(tokens) + "\n")
        print(f"{members} members with ACTIVE tokens, concerts {ids} of {seats} seats -> {out}")
    else:
        raise SystemExit(f"unknown: {what}")


if __name__ == "__main__":
    main()
