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
//
// k6 runs on the same cores as the server, so the check is made cheap
// without weakening it: a VU reads and parses the body of its first map of
// each concert (status 200 and exactly SEATS seats) and keeps its length in
// bytes; every later read of that concert (nothing changes the maps during
// the run) is checked for status 200 and the same Content-Length, without
// copying the body into the VU. Samples carry only the tags in use.
import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import {
  API, CHEAP_OPTIONS, COMMON_OPTIONS, READ_BODY, activeMembers, createConcerts, envInt, envStr,
} from './lib/common.js';

const VUS = envInt('VUS', 1500);
const DURATION = envStr('DURATION', '60s');
const CONCERTS = envInt('CONCERTS', 10);
const SEATS = envInt('SEATS', 50);
const P95_MS = envInt('P95_MS', 5);

export const options = {
  ...COMMON_OPTIONS,
  ...CHEAP_OPTIONS,
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

const TAGS = { name: 'GET /concerts/{id}/seats' };
const FULL_CHECK = {
  'seat map 200': (r) => r.status === 200,
  [`${SEATS} seats`]: (r) => r.status === 200 && r.json('seats.#') === SEATS,
};
// Per VU: request parameters, and each concert's checked body length.
let params = null;
let fullParams = null;
const checkedLength = {};
let expectedLength = null;
const LENGTH_CHECK = {
  'seat map 200': (r) => r.status === 200,
  [`${SEATS} seats`]: (r) => r.status === 200 && r.headers['Content-Length'] === expectedLength,
};

export default function (data) {
  if (params === null) {
    const token = data.tokens[(exec.vu.idInTest - 1) % data.tokens.length];
    params = { headers: { 'X-Queue-Token': token }, tags: TAGS };
    fullParams = { ...params, ...READ_BODY };
  }
  const concert = data.concerts[Math.floor(Math.random() * data.concerts.length)];
  const url = `${API}/concerts/${concert}/seats`;
  const known = checkedLength[concert];
  if (known === undefined) {
    const res = http.get(url, fullParams);
    if (check(res, FULL_CHECK)) checkedLength[concert] = String(res.body.length);
  } else {
    expectedLength = known;
    check(http.get(url, params), LENGTH_CHECK);
  }
  sleep(1);
}
