// The translations, without a browser: every error code of the contract
// has a sentence in both languages, both languages have the same keys, and
// every key the pages name exists.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import vm from "node:vm";

const web = new URL("../../../web/", import.meta.url);
const read = (name) => readFileSync(new URL(name, web), "utf8");

function load() {
  const sandbox = { window: {} };
  vm.runInNewContext(read("i18n.js"), sandbox);
  vm.runInNewContext(read("i18n-admin.js"), sandbox);
  return sandbox.window.I18N;
}

// Every `code` of the contract's error table (v1 and the v1.1 additions).
const CODES = [
  "VALIDATION_FAILED", "UNAUTHENTICATED", "TOKEN_INVALID", "TOKEN_NOT_ACTIVE", "FORBIDDEN", "NOT_FOUND",
  "METHOD_NOT_ALLOWED", "SEAT_UNAVAILABLE", "TICKET_LIMIT", "SALES_CLOSED", "HOLD_EXPIRED",
  "RESERVATION_NOT_PENDING", "IDEMPOTENCY_CONFLICT", "INSUFFICIENT_BALANCE", "PAYLOAD_TOO_LARGE",
  "UNSUPPORTED_MEDIA_TYPE", "UNAVAILABLE", "RESERVATION_NOT_CONFIRMED", "REFUND_CLOSED", "SEATS_AVAILABLE",
];

test("every error code reads as a sentence in English and Korean", () => {
  const i18n = load();
  for (const code of [...CODES, "NETWORK", "UNKNOWN"]) {
    for (const lang of ["en", "ko"]) {
      const text = i18n[lang][`err.${code}`];
      assert.ok(text, `err.${code} in ${lang}`);
      assert.ok(!text.includes(code), `err.${code} in ${lang} does not show the code`);
      assert.match(text, /[.!?다요]\s*$|\)$/, `err.${code} in ${lang} is a sentence: ${text}`);
    }
  }
});

test("both languages have the same keys and placeholders", () => {
  const { en, ko } = load();
  assert.deepEqual(Object.keys(ko).sort(), Object.keys(en).sort());
  const names = (s) => (s.match(/\{\w+\}/g) || []).sort();
  for (const key of Object.keys(en)) assert.deepEqual(names(ko[key]), names(en[key]), key);
});

test("every key the pages name exists", () => {
  const { en } = load();
  const used = new Set();
  for (const file of ["index.html", "admin.html"]) {
    for (const m of read(file).matchAll(/data-i18n(?:-label|-placeholder)?="([^"]+)"/g)) used.add(m[1]);
  }
  for (const file of ["app.js", "admin.js", "common.js"]) {
    // `t("kind." + h.kind)` names a family: checked below, value by value.
    for (const m of read(file).matchAll(/\bt\("([a-zA-Z.]+)"/g)) if (!m[1].endsWith(".")) used.add(m[1]);
  }
  assert.ok(used.size > 100, `found ${used.size} keys`);
  for (const key of ["CHARGE", "PAYMENT", "REFUND"]) used.add(`kind.${key}`);
  for (const key of ["PENDING_PAYMENT", "CONFIRMED", "EXPIRED", "CANCELLED", "REFUNDED"]) used.add(`status.${key}`);
  for (const key of used) assert.ok(en[key] !== undefined, `${key} is translated`);
});
