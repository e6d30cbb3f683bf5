// The Java reference's seat-map scenario: VUs with ACTIVE queue tokens read
// random concerts' seat maps (GET /concerts/{id}/seats), sleeping 1 s
// between reads. Closed model, VUS for DURATION.
//
//   bash k6/run.sh k6/seats.js                              # 1,500 VUs, 60 s
//   bash k6/run.sh k6/seats.js -e VUS=1000
//   bash k6/run.sh k6/seats.js -e CONCERTS=20 -e SEATS=50
//
// Setup creates CONCERTS concerts of SEATS seats (default 10 x 50) and one
// member with an ACTIVE token per VU. Targets: no error, p95 < 5 ms.
import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { API, COMMON_OPTIONS, activeMembers, createConcerts, envInt, envStr } from './lib/common.js';

const VUS = envInt('VUS', 1500);
const DURATION = envStr('DURATION', '60s');
const CONCERTS = envInt('CONCERTS', 10);
const SEATS = envInt('SEATS', 50);
const P95_MS = envInt('P95_MS', 5);

export const options = {
  ...COMMON_OPTIONS,
  scenarios: {
    seats: { executor: 'constant-vus', vus: VUS, duration: DURATION, gracefulStop: '10s' },
  },
  thresholds: {
    'http_req_failed{scenario:seats}': ['rate==0'],
    'http_req_duration{scenario:seats}': [`p(95)<${P95_MS}`],
    'checks{scenario:seats}': ['rate==1'],
  },
};

export function setup() {
  const concerts = createConcerts(CONCERTS, SEATS);
  const tokens = activeMembers(VUS).map((m) => m.token);
  return { concerts, tokens };
}

export default function (data) {
  const token = data.tokens[(exec.vu.idInTest - 1) % data.tokens.length];
  const concert = data.concerts[Math.floor(Math.random() * data.concerts.length)];
  const res = http.get(`${API}/concerts/${concert}/seats`, {
    headers: { 'X-Queue-Token': token },
    tags: { name: 'GET /concerts/{id}/seats' },
  });
  check(res, {
    'seat map 200': (r) => r.status === 200,
    [`${SEATS} seats`]: (r) => r.status === 200 && r.json('seats.#') === SEATS,
  });
  sleep(1);
}
