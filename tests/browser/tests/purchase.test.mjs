// A fan joins the queue, is admitted, picks two seats (one with the mouse,
// one with the keyboard), holds, tops up inline, pays and sees the receipt;
// then the account page. The same on a phone in Korean, with the switch.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ADMIN_KEY, api, launch, PHONE, shot, sleep, startServer, waitText, until } from "../lib.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  if (server) await server.stop();
});

test("a fan joins, is admitted, picks two seats, holds, tops up, pays and sees the receipt", async () => {
  const browser = await launch({ locale: "en-US" });
  const { page } = browser;
  try {
    await page.goto(`${server.base}/`);
    await page.getByRole("heading", { name: "Pick a concert" }).waitFor();
    const card = page.locator("li.concert", { hasText: "IU HEREH World Tour" }).first();
    await card.getByRole("button", { name: /Join the queue/ }).waitFor();
    await shot(page, "catalog-desktop");

    await card.getByRole("button", { name: /Join the queue/ }).click();
    await page.getByRole("textbox", { name: "Your name" }).fill("Kim Ji-won");
    await page.getByRole("button", { name: "Join the queue" }).click();

    // Admitted at the next tick: the seat map opens by itself.
    const seat21 = page.locator('#seatmap button[data-n="21"]');
    await seat21.waitFor({ timeout: 20_000 });
    await waitText(page.locator("#turn-timer"), /Your turn ends in \d+:\d\d/);
    assert.match(await seat21.getAttribute("aria-label"), /^Seat 21, ₩154,000, available$/);

    // One seat with the mouse, the next with the keyboard.
    await seat21.click();
    await page.keyboard.press("ArrowRight");
    assert.equal(await page.evaluate(() => document.activeElement.dataset.n), "22", "the arrow key moves to seat 22");
    await page.keyboard.press("Space");
    assert.equal(await seat21.getAttribute("aria-pressed"), "true");
    assert.equal(await page.locator('#seatmap button[data-n="22"]').getAttribute("aria-pressed"), "true");
    assert.match(await page.locator('#seatmap button[data-n="22"]').getAttribute("aria-label"), /selected/);
    await waitText(page.locator("#pick-summary"), /2 selected: 21, 22 — ₩308,000/);
    await shot(page, "seatmap-desktop", { fullPage: true });

    await page.getByRole("button", { name: "Hold these seats" }).click();
    await page.getByRole("heading", { name: "Pay for your seats" }).waitFor();
    await waitText(page.locator("#hold-timer"), /Your seats are held for \d+:\d\d/);
    // A new member has nothing: the top-up form is offered inline.
    await waitText(page.locator("#short-line"), /You need ₩308,000 more/);
    assert.equal(await page.locator("#pay-btn").isDisabled(), true, "paying waits for the top-up");
    await shot(page, "checkout-topup-desktop");

    await page.getByRole("button", { name: "Top up", exact: true }).click();
    await waitText(page.locator("#notice"), /Topped up\. Your balance is now ₩308,000/);
    await until(async () => !(await page.locator("#pay-btn").isDisabled()), "the pay button");
    await page.locator("#pay-btn").click();

    await page.getByRole("heading", { name: "Payment complete" }).waitFor();
    const receipt = await page.locator("#receipt").textContent();
    assert.match(receipt, /IU HEREH World Tour/);
    assert.match(receipt, /21, 22/);
    assert.match(receipt, /Paid₩308,000/);
    assert.match(receipt, /Balance left₩0/);
    await shot(page, "receipt-desktop");

    // A reload keeps the receipt.
    await page.reload();
    await page.getByRole("heading", { name: "Payment complete" }).waitFor();

    await page.getByRole("link", { name: "See my tickets" }).click();
    await page.getByRole("heading", { name: "My account" }).waitFor();
    await waitText(page.locator("#account-reservations"), /Confirmed/);
    const history = await waitText(page.locator("#account-history"), /Payment/);
    assert.match(history, /Top-up/);
    assert.match(history, /-₩308,000/);
    await shot(page, "account-desktop", { fullPage: true });
    assert.deepEqual(browser.problems, []);
  } finally {
    await browser.close();
  }
});

test("on a phone in Korean: the browser's language chooses, the switch overrides", async () => {
  const browser = await launch({ locale: "ko-KR", viewport: PHONE });
  const { page } = browser;
  try {
    await page.goto(`${server.base}/`);
    await page.getByRole("heading", { name: "공연을 선택하세요" }).waitFor();
    assert.equal(await page.evaluate(() => document.documentElement.lang), "ko");
    const card = page.locator("li.concert", { hasText: "Jazz Night at Blue Moon" }).first();
    await card.getByRole("button", { name: /대기열 들어가기/ }).waitFor();
    await shot(page, "catalog-phone-ko");
    await card.getByRole("button", { name: /대기열 들어가기/ }).click();
    await page.getByRole("textbox", { name: "이름" }).fill("이서연");
    await page.getByRole("button", { name: "대기열 들어가기" }).click();

    const seat = page.locator('#seatmap button[data-n="12"]');
    await seat.waitFor({ timeout: 20_000 });
    assert.match(await seat.getAttribute("aria-label"), /^12번 좌석, 45,000원, 선택 가능$/);
    // The map fits the phone: no seat row wider than the screen.
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `the page is ${width}px wide on a 390px screen`);
    // Keyboard only: focus the map, move, select.
    await seat.focus();
    await page.keyboard.press("Enter");
    await page.keyboard.press("ArrowDown");
    await page.keyboard.press("Enter");
    await waitText(page.locator("#pick-summary"), /2석 선택/);
    await shot(page, "seatmap-phone-ko");
    await page.getByRole("button", { name: "이 좌석 선점하기" }).click();
    await page.getByRole("heading", { name: "결제하기" }).waitFor();
    await waitText(page.locator("#short-line"), /90,000원이 더 필요합니다/);
    await shot(page, "checkout-phone-ko");

    // The switch overrides the browser's language, and is remembered.
    await page.getByRole("button", { name: /Switch to English/ }).click();
    await page.getByRole("heading", { name: "Pay for your seats" }).waitFor();
    await page.reload();
    await page.getByRole("heading", { name: "Pay for your seats" }).waitFor();
    assert.equal(await page.evaluate(() => document.documentElement.lang), "en");

    // Cancelling frees the seats.
    await page.getByRole("button", { name: "Cancel hold" }).click();
    await waitText(page.locator("#notice"), /Your hold was cancelled/);
    await until(async () => (await page.locator('#seatmap button[data-n="12"]').getAttribute("aria-disabled")) === "false", "seat 12 free again");

    await page.goto(`${server.base}/#account`);
    await page.getByRole("heading", { name: "My account" }).waitFor();
    await waitText(page.locator("#account-reservations"), /Cancelled/);
    await shot(page, "account-phone", { fullPage: true });
    assert.deepEqual(browser.problems, []);
  } finally {
    await browser.close();
  }
});

test("a big hall is drawn a section at a time", async () => {
  const startsAt = new Date(Date.now() + 20 * 24 * 3600 * 1000).toISOString();
  const made = await api(server.base, "POST", "/admin/concerts", {
    admin: ADMIN_KEY,
    body: { title: "Big Hall", category: "pop", venue: "Stadium", startsAt, seatCount: 3000, price: 30000 },
  });
  assert.equal(made.status, 201);
  const browser = await launch({ locale: "en-US" });
  const { page } = browser;
  try {
    await page.goto(`${server.base}/`);
    const more = page.getByRole("button", { name: "Show more concerts" });
    const card = page.locator("li.concert", { hasText: "Big Hall" });
    while (!(await card.count())) {
      await more.click();
      await sleep(200);
    }
    await card.getByRole("button", { name: /Join the queue/ }).click();
    await page.getByRole("textbox", { name: "Your name" }).fill("Oh");
    await page.getByRole("button", { name: "Join the queue" }).click();
    await page.locator('#seatmap button[data-n="1"]').waitFor({ timeout: 20_000 });
    const sections = page.locator("#sections button");
    assert.equal(await sections.count(), 3, "3,000 seats in sections of at most 1,200");
    assert.equal(await page.locator("#seatmap button[data-n]").count(), 1200);
    await sections.nth(2).click();
    await page.locator('#seatmap button[data-n="3000"]').waitFor();
    assert.equal(await page.locator('#seatmap button[data-n="1"]').count(), 0);
    assert.deepEqual(browser.problems, []);
  } finally {
    await browser.close();
  }
});
