// k6's own ceiling on this box: how many requests per second k6 can send and
// time when the server's answer costs next to nothing (GET /health, a
// constant body, no lookup). Closed model, no sleep, no checks, bodies
// discarded: the least client work per request k6 allows. Whatever rate this
// reaches bounds every other script run on the same cores; the scripts that
// test the engine (token.js, flow.js, ...) spend more per request.
//
//   bash k6/run.sh k6/ceiling.js                         # 200 VUs, 30 s
//   bash k6/run.sh k6/ceiling.js -e VUS=64 -e DURATION=30s
//
// Fails only if a request fails (it measures a rate; it has no rate target).
import http from 'k6/http';
import { CHEAP_OPTIONS, COMMON_OPTIONS, ROOT_URL, envInt, envStr } from './lib/common.js';

const VUS = envInt('VUS', 200);
const DURATION = envStr('DURATION', '30s');

export const options = {
  ...COMMON_OPTIONS,
  ...CHEAP_OPTIONS,
  scenarios: {
    ceiling: { executor: 'constant-vus', vus: VUS, duration: DURATION, gracefulStop: '5s' },
  },
  thresholds: {
    'http_req_failed{scenario:ceiling}': ['rate==0'],
  },
};

const HEALTH_URL = `${ROOT_URL}/health`;
const PARAMS = { tags: { name: 'GET /health' } };

export default function () {
  http.get(HEALTH_URL, PARAMS);
}
