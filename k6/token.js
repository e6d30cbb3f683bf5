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
//
// k6 runs on the same cores as the server, so each iteration does as little
// client work as it can without changing what is tested: request parameters
// are built once per VU (and again only when the token changes), only the
// issue response's body is read (for the token), and samples carry only
// the tags in use (CHEAP_OPTIONS).
import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { API, CHEAP_OPTIONS, COMMON_OPTIONS, READ_BODY, createMembers, envInt, envStr } from './lib/common.js';

const VUS = envInt('VUS', 2000);
const DURATION = envStr('DURATION', '60s');
const P95_MS = envInt('P95_MS', 5);

export const options = {
  ...COMMON_OPTIONS,
  ...CHEAP_OPTIONS,
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

const ISSUE_URL = `${API}/queue/tokens`;
const STATUS_URL = `${API}/queue/status`;
const ISSUED = { 'token issued (200/201)': (r) => r.status === 200 || r.status === 201 };
const STATUS_OK = { 'status 200': (r) => r.status === 200 };
// Per VU (each VU has its own copy of this module's state).
let issueParams = null;
let statusParams = null;
let statusToken = null;

export default function (data) {
  if (issueParams === null) {
    const key = data.keys[(exec.vu.idInTest - 1) % data.keys.length];
    issueParams = {
      headers: { Authorization: `Bearer ${key}` }, tags: { name: 'POST /queue/tokens' }, ...READ_BODY,
    };
  }
  const issued = http.post(ISSUE_URL, null, issueParams);
  if (!check(issued, ISSUED)) {
    sleep(1);
    return;
  }
  const token = issued.json('token');
  if (token !== statusToken) {
    statusToken = token;
    statusParams = { headers: { 'X-Queue-Token': token }, tags: { name: 'GET /queue/status' } };
  }
  check(http.get(STATUS_URL, statusParams), STATUS_OK);
  sleep(1);
}
