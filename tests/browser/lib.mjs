// Helpers of the browser tests: start the real server on a free loopback
// port with a temp SQLite database, launch Debian's chromium with a fresh
// profile, call the API directly, take screenshots.
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { chromium } from "playwright-core";

export { sleep };
export const ADMIN_KEY = "browser-test-admin-key-0123456789";
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR || "";

export const DESKTOP = { width: 1280, height: 860 };
export const PHONE = { width: 390, height: 844 };

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts `concert-server` (CONCERT_BIN) with fast queue ticks; `env` overrides. */
export async function startServer(env = {}) {
  const bin = process.env.CONCERT_BIN;
  if (!bin) throw new Error("CONCERT_BIN is not set: run tests/browser/run.sh");
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), "concert-browser-db-"));
  const base = `http://127.0.0.1:${port}`;
  const logs = [];
  const child = spawn(bin, [], {
    env: {
      ...process.env,
      CONCERT_ADDR: `127.0.0.1:${port}`,
      DATABASE_URL: `sqlite://${dir}/concert.db`,
      CONCERT_ADMIN_KEY: ADMIN_KEY,
      CONCERT_QUEUE_TICK: "200ms",
      CONCERT_LOG_FORMAT: "pretty",
      RUST_LOG: "warn",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const keep = (chunk) => {
    for (const line of String(chunk).split("\n")) if (line) logs.push(line);
    if (logs.length > 300) logs.splice(0, logs.length - 300);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the server exited:\n${logs.join("\n")}`);
    try {
      const res = await fetch(`${base}/ready`);
      if (res.ok) break;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) throw new Error(`the server did not get ready:\n${logs.join("\n")}`);
    await sleep(100);
  }
  return {
    base,
    logs,
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await Promise.race([exited, sleep(15_000)]);
        if (child.exitCode === null) child.kill("SIGKILL");
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A browser of its own (fresh profile folder), with one page. */
export async function launch({ locale = "en-US", viewport = DESKTOP } = {}) {
  const profile = mkdtempSync(path.join(os.tmpdir(), "concert-browser-profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    locale,
    viewport,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  const problems = [];
  const watch = (p) => {
    p.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    p.on("console", (msg) => {
      if (msg.type() === "error" && !/status of 4\d\d|status of 503/.test(msg.text())) problems.push(`console: ${msg.text()}`);
    });
  };
  watch(page);
  context.on("page", watch);
  return {
    context,
    page,
    /** Script errors seen so far (the pages must not throw). */
    problems,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Saves docs/screenshots/<name>.png when SCREENSHOT_DIR is set. */
export async function shot(page, name, { fullPage = false } = {}) {
  if (!SCREENSHOT_DIR) return;
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  await page.evaluate(() => document.activeElement && document.activeElement.blur && document.activeElement.blur());
  await page.screenshot({ path: path.join(SCREENSHOT_DIR, `${name}.png`), fullPage, animations: "disabled", caret: "hide" });
}

/** One API call; resolves with {status, body}. */
export async function api(base, method, apiPath, { body, member, token, admin, idem } = {}) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (member) headers.authorization = `Bearer ${member}`;
  if (token) headers["x-queue-token"] = token;
  if (admin) headers["x-admin-key"] = admin;
  if (idem) headers["idempotency-key"] = idem;
  const res = await fetch(`${base}/api/v1${apiPath}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** A member made through the API, with `balance` and a queue token. */
export async function apiMember(base, name, balance = 0) {
  const created = await api(base, "POST", "/members", { body: { name } });
  const key = created.body.memberKey;
  if (balance > 0) await api(base, "POST", "/members/me/balance/charges", { member: key, body: { amount: balance } });
  const issued = await api(base, "POST", "/queue/tokens", { member: key });
  return { key, token: issued.body.token, position: issued.body.position };
}

/** Polls the member's token until ACTIVE (fails after `ms`). */
export async function untilActive(base, member, ms = 30_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const { body } = await api(base, "GET", "/queue/status", { token: member.token });
    if (body.status === "ACTIVE") return;
    if (Date.now() > deadline) throw new Error(`not admitted: ${JSON.stringify(body)}`);
    await sleep(100);
  }
}

/** The first concert of the catalog with this title. */
export async function concertByTitle(base, title) {
  const { body } = await api(base, "GET", `/concerts?limit=100&title=${encodeURIComponent(title)}`);
  return body.items[0];
}

/** Waits until the locator's text matches `pattern`; returns the text. */
export async function waitText(locator, pattern, ms = 15_000) {
  const deadline = Date.now() + ms;
  let text = "";
  for (;;) {
    try {
      text = (await locator.textContent({ timeout: 1000 })) || "";
      if (pattern.test(text)) return text;
    } catch {
      /* not there yet */
    }
    if (Date.now() > deadline) throw new Error(`waited for ${pattern}, last text: ${JSON.stringify(text)}`);
    await sleep(100);
  }
}

/** Waits until `fn()` is truthy; returns its value. */
export async function until(fn, what, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}
