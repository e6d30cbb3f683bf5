// A whole purchase per iteration, many VUs fighting over a few popular
// concerts: register a member -> charge -> queue token -> poll until ACTIVE
// -> find a date with free seats -> read its AVAILABLE seats -> hold a free
// seat (another one on 409) -> pay. Closed model, VUS for DURATION, no sleep.
//
//   bash k6/run.sh k6/flow.js                               # 1,000 VUs, 60 s
//   bash k6/run.sh k6/flow.js -e VUS=1000 -e DURATION=30s -e HOT=2
//
// Setup creates CONCERTS concerts of SEATS seats (default 60 x 1,000), all of
// one title on consecutive days. Each iteration asks GET /concerts/dates for
// the dates that still have seats and picks one of the HOT (default 4)
// earliest, so everybody fights over the same few concerts and moves on
// to the next date as one sells out.
//
// `purchases` counts completed payments (its rate is purchases/s; target
// PURCHASE_RATE, default 2,000/s). Teardown reads every concert's SOLD seats
// and the server's payments_completed_total: every payment buys exactly one
// seat, so a seat sold twice would show as more payments than SOLD seats
// (`sold_mismatch` must stay 0).
//
// k6 shares the cores with the server: only the responses whose bodies the
// iteration reads are copied into the VU (READ_BODY), samples carry only the
// tags in use (CHEAP_OPTIONS), and constant request parts are built once.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import {
  API, CHEAP_OPTIONS, COMMON_OPTIONS, JSON_HEADERS, READ_BODY, activeMembers, createConcerts, envInt, envStr,
  problemCode, serverMetric,
} from './lib/common.js';

const VUS = envInt('VUS', 1000);
const DURATION = envStr('DURATION', '60s');
const CONCERTS = envInt('CONCERTS', 60);
const SEATS = envInt('SEATS', 1000);
const HOT = envInt('HOT', 4);
const PURCHASE_RATE = envInt('PURCHASE_RATE', 2000);
const PRICE = 50000;
const TITLE = 'k6 flow';

const purchases = new Counter('purchases');
const holdConflicts = new Counter('hold_conflicts');
const soldOut = new Counter('sold_out');
const flowErrors = new Counter('flow_errors');
const purchaseTime = new Trend('purchase_duration', true);
const soldSeats = new Counter('sold_seats');
const serverPayments = new Counter('server_payments');
const soldMismatch = new Counter('sold_mismatch');

export const options = {
  ...COMMON_OPTIONS,
  ...CHEAP_OPTIONS,
  scenarios: {
    flow: { executor: 'constant-vus', vus: VUS, duration: DURATION, gracefulStop: '15s' },
  },
  thresholds: {
    purchases: [`rate>=${PURCHASE_RATE}`],
    flow_errors: ['count==0'],
    sold_mismatch: ['count==0'],
    'http_req_failed{scenario:flow}': ['rate==0'],
  },
};

export function setup() {
  const concerts = createConcerts(CONCERTS, SEATS, { title: () => TITLE, price: PRICE });
  return { concerts };
}

function fail(what, res) {
  flowErrors.add(1, { step: what });
  console.warn(`${what}: HTTP ${res.status} ${String(res.body).substring(0, 200)}`);
}

const HOLD_OK = http.expectedStatuses(201, 409);
const MEMBER_BODY = JSON.stringify({ name: 'fan' });
const CHARGE_BODY = JSON.stringify({ amount: PRICE });
const DATES_URL = `${API}/concerts/dates?title=${encodeURIComponent(TITLE)}`;
const MEMBER_PARAMS = { headers: JSON_HEADERS, tags: { name: 'POST /members' }, ...READ_BODY };
const PAYMENT_201 = { 'payment 201': (r) => r.status === 201 };

export default function () {
  const started = Date.now();
  const member = http.post(`${API}/members`, MEMBER_BODY, MEMBER_PARAMS);
  if (member.status !== 201) return fail('member', member);
  const auth = { Authorization: `Bearer ${member.json('memberKey')}` };

  const charge = http.post(`${API}/members/me/balance/charges`, CHARGE_BODY, {
    headers: { ...JSON_HEADERS, ...auth }, tags: { name: 'POST /members/me/balance/charges' },
  });
  if (charge.status !== 200) return fail('charge', charge);

  const issued = http.post(`${API}/queue/tokens`, null, {
    headers: auth, tags: { name: 'POST /queue/tokens' }, ...READ_BODY,
  });
  if (issued.status !== 201) return fail('token', issued);
  const gate = { 'X-Queue-Token': issued.json('token') };
  let status = issued.json('status');
  for (let polls = 0; status !== 'ACTIVE'; polls++) {
    if (polls >= 200) return fail('admission (20 s)', issued);
    sleep(0.05);
    const s = http.get(`${API}/queue/status`, { headers: gate, tags: { name: 'GET /queue/status' }, ...READ_BODY });
    if (s.status !== 200) return fail('status', s);
    status = s.json('status');
  }

  for (let round = 0; round < 5; round++) {
    const dates = http.get(DATES_URL, { tags: { name: 'GET /concerts/dates' }, ...READ_BODY });
    if (dates.status !== 200) return fail('dates', dates);
    const items = dates.json('items');
    if (items.length === 0) {
      soldOut.add(1);
      sleep(1);
      return;
    }
    const hot = items.slice(0, HOT);
    const concert = hot[Math.floor(Math.random() * hot.length)].concertId;
    const seats = http.get(`${API}/concerts/${concert}/seats?status=AVAILABLE`, {
      headers: gate, tags: { name: 'GET /concerts/{id}/seats' }, ...READ_BODY,
    });
    if (seats.status !== 200) return fail('seats', seats);
    const free = seats.json('seats.#.number');
    for (let attempt = 0; attempt < 3 && free.length > 0; attempt++) {
      const pick = free.splice(Math.floor(Math.random() * free.length), 1)[0];
      const hold = http.post(`${API}/reservations`, JSON.stringify({ concertId: concert, seatNumbers: [pick] }), {
        headers: { ...JSON_HEADERS, ...gate }, tags: { name: 'POST /reservations' }, responseCallback: HOLD_OK,
        ...READ_BODY,
      });
      if (hold.status === 409) {
        if (problemCode(hold) !== 'SEAT_UNAVAILABLE') return fail('hold', hold);
        holdConflicts.add(1);
        continue;
      }
      if (hold.status !== 201) return fail('hold', hold);
      const paid = http.post(`${API}/payments`, JSON.stringify({ reservationId: hold.json('id') }), {
        headers: { ...JSON_HEADERS, ...gate }, tags: { name: 'POST /payments' },
      });
      if (!check(paid, PAYMENT_201)) return fail('payment', paid);
      purchases.add(1);
      purchaseTime.add(Date.now() - started);
      return;
    }
  }
  // Five rounds of conflicts: counted as conflicts, not errors.
}

export function teardown(data) {
  // A fresh member's token to read the seat maps (the VUs' tokens expired on payment).
  const [reader] = activeMembers(1);
  let sold = 0;
  for (const id of data.concerts) {
    const r = http.get(`${API}/concerts/${id}/seats?status=SOLD`, {
      headers: { 'X-Queue-Token': reader.token }, tags: { phase: 'teardown' }, ...READ_BODY,
    });
    if (r.status !== 200) throw new Error(`teardown: seat map of ${id}: HTTP ${r.status}`);
    const numbers = r.json('seats.#.number');
    if (new Set(numbers).size !== numbers.length) soldMismatch.add(1, { why: 'seat listed twice' });
    sold += numbers.length;
  }
  const payments = serverMetric('payments_completed_total');
  soldSeats.add(sold);
  serverPayments.add(payments);
  // One seat per payment: more payments than SOLD seats means a seat was sold twice.
  soldMismatch.add(payments === sold ? 0 : 1, { why: 'payments != SOLD seats' });
  console.log(`teardown: ${sold} SOLD seats, server payments_completed_total=${payments}`);
}
