// Helpers shared by the k6 scripts: the base URL, concerts, members, queue
// tokens. Setup helpers send their requests in batches (http.batch) and fail
// the test (throw) when the server refuses them.
import http from 'k6/http';
import { sleep } from 'k6';

export const ROOT_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
export const API = `${ROOT_URL}/api/v1`;
export const ADMIN_KEY = __ENV.ADMIN_KEY || 'k6-load-test-admin-key';
export const JSON_HEADERS = { 'Content-Type': 'application/json' };

// Options every script spreads into its own: parallel batches in setup, p99 in
// the summary, and bounded setup/teardown.
export const COMMON_OPTIONS = {
  batch: 200,
  batchPerHost: 200,
  setupTimeout: '300s',
  teardownTimeout: '120s',
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
};

// For the measured scenarios, where k6 shares the 2 cores with the server:
// response bodies are not copied into the VU unless a request asks for one
// (`responseType: 'text'`, see READ_BODY), and each sample carries only the
// tags the thresholds and the summary use (no per-URL tag, no TLS/protocol
// tags). What is requested and checked is unchanged.
export const CHEAP_OPTIONS = {
  discardResponseBodies: true,
  systemTags: ['status', 'method', 'name', 'scenario', 'check', 'error_code', 'expected_response'],
};
// Request parameter for a response whose body the script reads.
export const READ_BODY = { responseType: 'text' };

export function envInt(name, fallback) {
  const v = __ENV[name];
  if (v === undefined || v === '') return fallback;
  const n = parseInt(v, 10);
  if (Number.isNaN(n)) throw new Error(`${name} must be an integer, got ${v}`);
  return n;
}

export function envStr(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : v;
}

const SETUP_TAGS = { phase: 'setup' };

function chunks(list, size) {
  const out = [];
  for (let i = 0; i < list.length; i += size) out.push(list.slice(i, i + size));
  return out;
}

function batchOk(requests, expected, what) {
  const out = [];
  for (const part of chunks(requests, 200)) {
    const responses = http.batch(part);
    responses.forEach((r, i) => {
      if (!expected.includes(r.status)) {
        throw new Error(`${what}: HTTP ${r.status} ${r.body && r.body.substring(0, 300)} for ${JSON.stringify(part[i][1]).substring(0, 200)}`);
      }
      out.push(r);
    });
  }
  return out;
}

// Creates `count` concerts; returns their ids. `dayOffset(i)` picks each
// start date (days from now), `title(i)` each title.
export function createConcerts(count, seats, opts = {}) {
  const price = opts.price || 50000;
  const title = opts.title || ((i) => `k6 concert ${i + 1}`);
  const day = opts.dayOffset || ((i) => 1 + i);
  const now = Date.now();
  const requests = [];
  for (let i = 0; i < count; i++) {
    const startsAt = new Date(now + day(i) * 86400000).toISOString();
    requests.push([
      'POST',
      `${API}/admin/concerts`,
      JSON.stringify({
        title: title(i),
        category: 'k6',
        venue: 'k6 hall',
        startsAt,
        seatCount: seats,
        price,
      }),
      { headers: { ...JSON_HEADERS, 'X-Admin-Key': ADMIN_KEY }, tags: SETUP_TAGS, timeout: '60s', ...READ_BODY },
    ]);
  }
  return batchOk(requests, [201], 'create concert').map((r) => r.json('id'));
}

// Creates `count` members (charged `balance` when > 0); returns [{id, key}].
export function createMembers(count, balance = 0) {
  const requests = [];
  for (let i = 0; i < count; i++) {
    requests.push(['POST', `${API}/members`, JSON.stringify({ name: `k6-${i}` }),
      { headers: JSON_HEADERS, tags: SETUP_TAGS, timeout: '60s', ...READ_BODY }]);
  }
  const members = batchOk(requests, [201], 'create member').map((r) => ({ id: r.json('id'), key: r.json('memberKey') }));
  if (balance > 0) {
    const charges = members.map((m) => ['POST', `${API}/members/me/balance/charges`, JSON.stringify({ amount: balance }),
      { headers: { ...JSON_HEADERS, Authorization: `Bearer ${m.key}` }, tags: SETUP_TAGS, timeout: '60s', ...READ_BODY }]);
    batchOk(charges, [200], 'charge');
  }
  return members;
}

// Issues a queue token for every member key; returns the tokens.
export function issueTokens(keys) {
  const requests = keys.map((key) => ['POST', `${API}/queue/tokens`, null,
    { headers: { Authorization: `Bearer ${key}` }, tags: SETUP_TAGS, timeout: '60s', ...READ_BODY }]);
  return batchOk(requests, [200, 201], 'issue token').map((r) => r.json('token'));
}

// Polls until every token is ACTIVE (at most `timeoutS` seconds).
export function waitActive(tokens, timeoutS = 60) {
  const deadline = Date.now() + timeoutS * 1000;
  let pending = tokens.slice();
  while (pending.length > 0) {
    if (Date.now() > deadline) throw new Error(`${pending.length} tokens still not ACTIVE after ${timeoutS}s`);
    const requests = pending.map((t) => ['GET', `${API}/queue/status`, null,
      { headers: { 'X-Queue-Token': t }, tags: SETUP_TAGS, ...READ_BODY }]);
    const responses = batchOk(requests, [200], 'token status');
    pending = pending.filter((_, i) => responses[i].json('status') !== 'ACTIVE');
    if (pending.length > 0) sleep(0.1);
  }
}

// `count` members (charged `balance`), each with an ACTIVE queue token:
// returns [{id, key, token}].
export function activeMembers(count, balance = 0) {
  const members = createMembers(count, balance);
  const tokens = issueTokens(members.map((m) => m.key));
  waitActive(tokens);
  return members.map((m, i) => ({ id: m.id, key: m.key, token: tokens[i] }));
}

// A problem JSON's `code`, or '' when the body is not one (or was not read).
export function problemCode(response) {
  try {
    return response.json('code') || '';
  } catch (e) {
    return '';
  }
}

// Reads /metrics and returns the value of one un-labelled metric (or NaN).
export function serverMetric(name) {
  const r = http.get(`${ROOT_URL}/metrics`, { tags: { phase: 'teardown' }, ...READ_BODY });
  const line = r.body.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}
