// Open-model capacity of one operation: a constant (or ramping) arrival rate,
// pass = p99 < P99_MS (default 50 ms), no error, no dropped iteration.
// One operation per run, chosen with OP:
//
//   issue   POST /queue/tokens for a member that has no live token (201, a
//           durable write). Each iteration first registers that member
//           (POST /members, tagged op:prep, also a durable write).
//   status  GET /queue/status with one of TOKENS ACTIVE tokens.
//   seats   GET /concerts/{id}/seats of one of 10 concerts of SEATS (50) seats.
//   hold    POST /reservations of one seat, a different seat every time, on
//           concerts of 100,000 seats, with one of TOKENS ACTIVE tokens
//           (run the server with CONCERT_MAX_SEATS_PER_MEMBER=1000).
//   pay     POST /payments. A payment expires its token, so each iteration
//           is one member's purchase: token -> poll until ACTIVE -> hold ->
//           pay; only the payment is the measured op (op:pay), the rest is
//           tagged op:prep. Each VU reuses its own member (charged once).
//
// Modes:
//   RATE=5000 DURATION=30s                      constant-arrival-rate (default)
//   MODE=ramp START_RATE=1000 MAX_RATE=20000 RAMP=60s   ramping-arrival-rate
// The highest passing constant rate is found by k6/capacity_search.sh.
//
//   bash k6/run.sh k6/capacity.js -e OP=status -e RATE=10000
//   CONCERT_MAX_SEATS_PER_MEMBER=1000 bash k6/run.sh k6/capacity.js -e OP=hold -e RATE=5000
import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import {
  API, COMMON_OPTIONS, JSON_HEADERS, activeMembers, createConcerts, envInt, envStr,
} from './lib/common.js';

const OP = envStr('OP', 'status');
const MODE = envStr('MODE', 'constant');
const RATE = envInt('RATE', 1000);
const DURATION = envStr('DURATION', '30s');
const P99_MS = envInt('P99_MS', 50);
const TOKENS = envInt('TOKENS', 1000);
const SEATS = envInt('SEATS', 50);
// VUs started before the run (starting more during it drops iterations): about
// 100 ms of the rate in flight (pay iterations wait ~100 ms for admission: 300 ms).
const PRE_VUS = envInt('PRE_VUS', Math.max(100, Math.ceil(RATE * (OP === 'pay' ? 0.3 : 0.1))));
const MAX_VUS = envInt('MAX_VUS', 3000);
const BIG_SEATS = 100000;
const PRICE = 1000;
const MAX_SEATS_PER_MEMBER = envInt('MAX_SEATS_PER_MEMBER', 4);

const OPS = ['issue', 'status', 'seats', 'hold', 'pay'];
if (!OPS.includes(OP)) throw new Error(`OP must be one of ${OPS.join(', ')}`);

const opErrors = new Counter('op_errors');

function parseSeconds(text) {
  const m = /^(\d+)(ms|s|m)$/.exec(text);
  if (!m) throw new Error(`durations like 30s or 2m, got ${text}`);
  const n = parseInt(m[1], 10);
  return m[2] === 'ms' ? n / 1000 : m[2] === 's' ? n : n * 60;
}

const WARMUP = envStr('WARMUP', '5s');
// Upper bound of the warm-up's iterations (seat indices of the measured run start after it).
const WARMUP_ITERS = MODE === 'ramp' ? 0 : Math.ceil(RATE * parseSeconds(WARMUP) * 1.1) + 100;

const scenario = MODE === 'ramp'
  ? {
    executor: 'ramping-arrival-rate',
    startRate: envInt('START_RATE', 100),
    timeUnit: '1s',
    stages: [{ target: envInt('MAX_RATE', 20000), duration: envStr('RAMP', '60s') }],
    preAllocatedVUs: PRE_VUS,
    maxVUs: MAX_VUS,
    gracefulStop: '5s',
  }
  : {
    executor: 'constant-arrival-rate',
    rate: RATE,
    timeUnit: '1s',
    duration: DURATION,
    preAllocatedVUs: PRE_VUS,
    maxVUs: MAX_VUS,
    gracefulStop: '5s',
  };

// A constant rate is preceded by WARMUP at the same rate (VUs allocated,
// connections open) that the thresholds do not judge.
const scenarios = MODE === 'ramp'
  ? { [OP]: scenario }
  : {
    warmup: { ...scenario, duration: WARMUP },
    [OP]: { ...scenario, startTime: WARMUP },
  };

export const options = {
  ...COMMON_OPTIONS,
  scenarios,
  thresholds: {
    [`http_req_duration{scenario:${OP},op:${OP}}`]: [`p(99)<${P99_MS}`],
    [`http_req_failed{scenario:${OP}}`]: ['rate==0'],
    op_errors: ['count==0'],
    [`dropped_iterations{scenario:${OP}}`]: ['count==0'],
  },
};

// Seats needed by hold/pay at most: the whole run at the top rate.
function seatsNeeded() {
  const rate = MODE === 'ramp' ? envInt('MAX_RATE', 20000) : RATE;
  const seconds = MODE === 'ramp' ? parseSeconds(envStr('RAMP', '60s')) : parseSeconds(DURATION) + parseSeconds(WARMUP);
  return WARMUP_ITERS + Math.ceil(rate * (seconds + 5) * 1.1);
}

export function setup() {
  const data = { concerts: [], tokens: [] };
  if (OP === 'status' || OP === 'seats') {
    data.tokens = activeMembers(Math.min(TOKENS, 1000)).map((m) => m.token);
  }
  if (OP === 'seats') data.concerts = createConcerts(10, SEATS);
  if (OP === 'hold') {
    const needed = seatsNeeded();
    // Each member may hold MAX_SEATS_PER_MEMBER seats per concert; tokens rotate.
    const members = Math.max(TOKENS, Math.ceil(needed / MAX_SEATS_PER_MEMBER));
    if (members > 20000) {
      throw new Error(`hold at this rate needs ${members} members of ${MAX_SEATS_PER_MEMBER} seats: `
        + 'run the server with CONCERT_MAX_SEATS_PER_MEMBER=1000');
    }
    data.tokens = activeMembers(members).map((m) => m.token);
    data.concerts = createConcerts(Math.ceil(needed / BIG_SEATS), BIG_SEATS);
  }
  if (OP === 'pay') {
    data.concerts = createConcerts(Math.ceil(seatsNeeded() / BIG_SEATS), BIG_SEATS, { price: PRICE });
  }
  return data;
}

function record(res, expected, what) {
  if (!check(res, { [`${what} ${expected}`]: (r) => r.status === expected })) {
    opErrors.add(1, { what });
    console.warn(`${what}: HTTP ${res.status} ${String(res.body).substring(0, 200)}`);
    return false;
  }
  return true;
}

// The i-th unique seat across the run's big concerts.
function seatOf(data, i) {
  return { concertId: data.concerts[Math.floor(i / BIG_SEATS)], seat: (i % BIG_SEATS) + 1 };
}

let payMember = null; // this VU's member (pay)

export default function (data) {
  // Unique across the warm-up and the measured scenario (hold/pay seats).
  const i = exec.scenario.iterationInTest + (exec.scenario.name === 'warmup' ? 0 : WARMUP_ITERS);
  if (OP === 'status') {
    const res = http.get(`${API}/queue/status`, {
      headers: { 'X-Queue-Token': data.tokens[i % data.tokens.length] }, tags: { op: 'status' },
    });
    record(res, 200, 'status');
  } else if (OP === 'seats') {
    const res = http.get(`${API}/concerts/${data.concerts[i % data.concerts.length]}/seats`, {
      headers: { 'X-Queue-Token': data.tokens[i % data.tokens.length] }, tags: { op: 'seats' },
    });
    record(res, 200, 'seats');
  } else if (OP === 'issue') {
    const member = http.post(`${API}/members`, JSON.stringify({ name: 'cap' }), {
      headers: JSON_HEADERS, tags: { op: 'prep' },
    });
    if (!record(member, 201, 'member')) return;
    const res = http.post(`${API}/queue/tokens`, null, {
      headers: { Authorization: `Bearer ${member.json('memberKey')}` }, tags: { op: 'issue' },
    });
    record(res, 201, 'issue');
  } else if (OP === 'hold') {
    const { concertId, seat } = seatOf(data, i);
    const res = http.post(`${API}/reservations`, JSON.stringify({ concertId, seatNumbers: [seat] }), {
      headers: { ...JSON_HEADERS, 'X-Queue-Token': data.tokens[i % data.tokens.length] }, tags: { op: 'hold' },
    });
    record(res, 201, 'hold');
  } else if (OP === 'pay') {
    pay(data, i);
  }
}

function pay(data, i) {
  if (!payOnce(data, i)) payMember = null; // a failed step may leave a live token: start afresh
}

function payOnce(data, i) {
  const prep = { op: 'prep' };
  if (payMember === null) {
    const m = http.post(`${API}/members`, JSON.stringify({ name: 'cap' }), { headers: JSON_HEADERS, tags: prep });
    if (!record(m, 201, 'member')) return false;
    const auth = { Authorization: `Bearer ${m.json('memberKey')}` };
    const c = http.post(`${API}/members/me/balance/charges`, JSON.stringify({ amount: 10000000 }), {
      headers: { ...JSON_HEADERS, ...auth }, tags: prep,
    });
    if (!record(c, 200, 'charge')) return false;
    payMember = auth;
  }
  const issued = http.post(`${API}/queue/tokens`, null, { headers: payMember, tags: prep });
  if (!record(issued, 201, 'issue')) return false;
  const gate = { 'X-Queue-Token': issued.json('token') };
  let status = issued.json('status');
  for (let polls = 0; status !== 'ACTIVE'; polls++) {
    if (polls >= 100) {
      opErrors.add(1, { what: 'admission' });
      return false;
    }
    sleep(0.02);
    const s = http.get(`${API}/queue/status`, { headers: gate, tags: prep });
    if (!record(s, 200, 'status')) return false;
    status = s.json('status');
  }
  const { concertId, seat } = seatOf(data, i);
  const hold = http.post(`${API}/reservations`, JSON.stringify({ concertId, seatNumbers: [seat] }), {
    headers: { ...JSON_HEADERS, ...gate }, tags: prep,
  });
  if (!record(hold, 201, 'hold')) return false;
  const paid = http.post(`${API}/payments`, JSON.stringify({ reservationId: hold.json('id') }), {
    headers: { ...JSON_HEADERS, ...gate }, tags: { op: 'pay' },
  });
  return record(paid, 201, 'pay');
}
