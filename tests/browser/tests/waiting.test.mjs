// The waiting room: a reload (or a second tab) while WAITING keeps the
// place; the page moves up by itself as people ahead are served; a token
// the server no longer knows says so and offers to queue again.
//
// One ACTIVE token at a time (CONCERT_QUEUE_MAX_ACTIVE=1), so people stay
// in line until the one ahead pays.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { api, apiMember, launch, PHONE, shot, startServer, until, untilActive, waitText, concertByTitle } from "../lib.mjs";

let server;
before(async () => {
  server = await startServer({
    CONCERT_QUEUE_TICK: "1s",
    CONCERT_QUEUE_ADMIT_PER_TICK: "1",
    CONCERT_QUEUE_MAX_ACTIVE: "1",
    CONCERT_WAITING_IDLE_TIMEOUT: "10m",
  });
});
after(async () => {
  if (server) await server.stop();
});

async function position(page) {
  return Number(await waitText(page.locator("#queue-position"), /^\d+$/));
}

test("a reload while WAITING keeps the place, and the line moves by itself", async () => {
  // Three people ahead: the first is admitted and holds the only ACTIVE slot.
  const ahead = [];
  for (const name of ["first", "second", "third"]) ahead.push(await apiMember(server.base, name, 500_000));
  await untilActive(server.base, ahead[0]);

  const browser = await launch();
  const { page } = browser;
  try {
    await page.goto(`${server.base}/`);
    const card = page.locator("li.concert", { hasText: "Indie Rock Festival" }).first();
    await card.getByRole("button", { name: /Join the queue/ }).click();
    await page.getByRole("textbox", { name: "Your name" }).fill("Han");
    await page.getByRole("button", { name: "Join the queue" }).click();
    await page.getByRole("heading", { name: "You are in line" }).waitFor();
    const place = await position(page);
    assert.equal(place, 3, "two people wait ahead");
    await waitText(page.locator("#queue-wait"), /Estimated wait/);
    const token = await page.evaluate(() => localStorage.getItem("concert.token"));
    assert.match(token, /^[0-9a-f]{48}$/);
    await shot(page, "waiting-desktop");

    await page.reload();
    await page.getByRole("heading", { name: "You are in line" }).waitFor();
    assert.equal(await position(page), place, "the reload kept the place");
    assert.equal(await page.evaluate(() => localStorage.getItem("concert.token")), token, "and the token");

    const tab = await browser.context.newPage();
    await tab.goto(`${server.base}/`);
    await tab.getByRole("heading", { name: "You are in line" }).waitFor();
    assert.equal(await position(tab), place, "a new tab shows the same place");
    await tab.close();

    // The first person pays: their token expires, the next one is admitted,
    // and this page moves up without a reload.
    const concert = await concertByTitle(server.base, "Indie Rock Festival");
    const hold = await api(server.base, "POST", "/reservations", { token: ahead[0].token, body: { concertId: concert.id, seatNumbers: [250] } });
    assert.equal(hold.status, 201);
    const paid = await api(server.base, "POST", "/payments", { token: ahead[0].token, body: { reservationId: hold.body.id } });
    assert.equal(paid.status, 201);
    await until(async () => (await position(page)) === place - 1, "the page moving up", 20_000);
    assert.deepEqual(browser.problems, []);
  } finally {
    await browser.close();
  }
});

test("on a phone, in Korean, and a place the server no longer knows", async () => {
  const browser = await launch({ locale: "ko-KR", viewport: PHONE });
  const { page } = browser;
  try {
    await page.goto(`${server.base}/`);
    const card = page.locator("li.concert", { hasText: "Indie Rock Festival" }).first();
    await card.getByRole("button", { name: /대기열 들어가기/ }).click();
    await page.getByRole("textbox", { name: "이름" }).fill("정민");
    await page.getByRole("button", { name: "대기열 들어가기" }).click();
    await page.getByRole("heading", { name: "대기 중입니다" }).waitFor();
    await position(page);
    await waitText(page.locator("#queue-wait"), /예상 대기 시간/);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `the page is ${width}px wide on a 390px screen`);
    await shot(page, "waiting-phone-ko");

    // A token the server does not know (e.g. expired long ago): the page
    // says so and offers to queue again.
    await page.evaluate(() => localStorage.setItem("concert.token", "0".repeat(48)));
    await page.reload();
    await page.getByRole("heading", { name: "대기 순서가 만료되었습니다" }).waitFor();
    await shot(page, "waiting-expired-phone-ko");
    await page.getByRole("button", { name: "다시 줄 서기" }).click();
    await page.getByRole("heading", { name: "대기 중입니다" }).waitFor();
    await position(page);
    assert.match(await page.evaluate(() => localStorage.getItem("concert.token")), /^[0-9a-f]{48}$/);
    assert.deepEqual(browser.problems, []);
  } finally {
    await browser.close();
  }
});
