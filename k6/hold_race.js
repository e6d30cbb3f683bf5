// Hold races: N VUs fire one hold each at the same moment.
//   one_rR   - all N at ONE seat of a concert: exactly one winner.
//   kseats_rR - N at K seats of another concert (VU i aims at seat i mod K + 1):
//              exactly K winners.
// ROUNDS rounds of each (default 3), each on fresh concerts, one after the
// other; every round has its own thresholds, so "exact every time" is checked.
//
//   bash k6/run.sh k6/hold_race.js                          # N=500, K=10, 3 rounds
//   bash k6/run.sh k6/hold_race.js -e N=1000 -e K=50 -e ROUNDS=5
//
// Setup makes N members with ACTIVE tokens. Each race is a per-vu-iterations
// scenario (N VUs x 1 iteration, all started together); each VU first warms
// its connection (GET /health), then waits for the same wall-clock instant
// (scenario start + 1.5 s) and sends its hold. Losers must get 409
// SEAT_UNAVAILABLE; anything else counts in `hold_errors`.
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import {
  API, COMMON_OPTIONS, JSON_HEADERS, ROOT_URL, activeMembers, createConcerts, envInt, problemCode,
} from './lib/common.js';

const N = envInt('N', 500);
const K = envInt('K', 10);
const ROUNDS = envInt('ROUNDS', 3);
const FIRE_AFTER_MS = 1500;
const ROUND_SECONDS = 6; // each race scenario gets this much time before the next starts

const winners = new Counter('hold_winners');
const losers = new Counter('hold_losers');
const errors = new Counter('hold_errors');
const skew = new Trend('fire_skew_ms'); // how late each VU fired after the agreed instant

const scenarios = {};
const thresholds = { hold_errors: ['count==0'] };
for (let r = 1; r <= ROUNDS; r++) {
  for (const [kind, want] of [['one', 1], ['kseats', K]]) {
    const name = `${kind}_r${r}`;
    const index = (r - 1) * 2 + (kind === 'one' ? 0 : 1);
    scenarios[name] = {
      executor: 'per-vu-iterations',
      vus: N,
      iterations: 1,
      maxDuration: `${ROUND_SECONDS - 1}s`,
      startTime: `${index * ROUND_SECONDS}s`,
      gracefulStop: '0s',
      env: { RACE_INDEX: String(index), RACE_KIND: kind },
      exec: 'race',
    };
    thresholds[`hold_winners{scenario:${name}}`] = [`count==${want}`];
    thresholds[`hold_losers{scenario:${name}}`] = [`count==${N - want}`];
  }
}

export const options = {
  ...COMMON_OPTIONS,
  scenarios,
  thresholds,
};

export function setup() {
  if (K > N) throw new Error(`K (${K}) must not exceed N (${N})`);
  // Per round: a 50-seat concert for the one-seat race, a K-seat one for the K-seat race.
  const concerts = [];
  for (let r = 0; r < ROUNDS; r++) {
    concerts.push(createConcerts(1, 50, { title: () => `race one r${r + 1}` })[0]);
    concerts.push(createConcerts(1, K, { title: () => `race k r${r + 1}` })[0]);
  }
  const tokens = activeMembers(N).map((m) => m.token);
  return { concerts, tokens };
}

export function race(data) {
  const index = parseInt(__ENV.RACE_INDEX, 10);
  const i = exec.scenario.iterationInTest; // 0..N-1, one per VU
  const token = data.tokens[i % data.tokens.length];
  const concert = data.concerts[index];
  const seat = __ENV.RACE_KIND === 'one' ? 25 : (i % K) + 1;
  http.get(`${ROOT_URL}/health`, { tags: { name: 'warm-up' } });
  const fireAt = exec.scenario.startTime + FIRE_AFTER_MS;
  const wait = fireAt - Date.now();
  if (wait > 0) sleep(wait / 1000);
  skew.add(Date.now() - fireAt);
  const res = http.post(`${API}/reservations`, JSON.stringify({ concertId: concert, seatNumbers: [seat] }), {
    headers: { ...JSON_HEADERS, 'X-Queue-Token': token },
    tags: { name: 'POST /reservations' },
    responseCallback: http.expectedStatuses(201, 409),
  });
  if (res.status === 201) {
    winners.add(1);
  } else if (res.status === 409 && problemCode(res) === 'SEAT_UNAVAILABLE') {
    losers.add(1);
  } else {
    errors.add(1);
    console.warn(`hold: HTTP ${res.status} ${String(res.body).substring(0, 200)}`);
  }
}
