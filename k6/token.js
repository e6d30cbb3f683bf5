// The Java reference's queue-token scenario: each VU issues a queue token
// (POST /queue/tokens with its member key) and reads its status
// (GET /queue/status), then sleeps 1 s. Closed model, VUS for DURATION.
//
//   bash k6/run.sh k6/token.js                              # 2,000 VUs, 60 s
//   bash k6/run.sh k6/token.js -e VUS=1000 -e DURATION=60s
//
// Setup registers one member per VU. The first issue of a member is a new
// token (201, a durable write); later ones return the live token (200, a
// poll), as the contract says. Targets: no error, p95 < 5 ms.
import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { API, COMMON_OPTIONS, createMembers, envInt, envStr } from './lib/common.js';

const VUS = envInt('VUS', 2000);
const DURATION = envStr('DURATION', '60s');
const P95_MS = envInt('P95_MS', 5);

export const options = {
  ...COMMON_OPTIONS,
  scenarios: {
    token: { executor: 'constant-vus', vus: VUS, duration: DURATION, gracefulStop: '10s' },
  },
  thresholds: {
    'http_req_failed{scenario:token}': ['rate==0'],
    'http_req_duration{scenario:token}': [`p(95)<${P95_MS}`],
    'checks{scenario:token}': ['rate==1'],
  },
};

export function setup() {
  return { keys: createMembers(VUS).map((m) => m.key) };
}

export default function (data) {
  const key = data.keys[(exec.vu.idInTest - 1) % data.keys.length];
  const issued = http.post(`${API}/queue/tokens`, null, {
    headers: { Authorization: `Bearer ${key}` },
    tags: { name: 'POST /queue/tokens' },
  });
  const ok = check(issued, { 'token issued (200/201)': (r) => r.status === 200 || r.status === 201 });
  if (!ok) {
    sleep(1);
    return;
  }
  const status = http.get(`${API}/queue/status`, {
    headers: { 'X-Queue-Token': issued.json('token') },
    tags: { name: 'GET /queue/status' },
  });
  check(status, { 'status 200': (r) => r.status === 200 });
  sleep(1);
}
