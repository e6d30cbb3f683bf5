// The operator dashboard: the admin key entered once, a concert created with
// the form, and the sale moving on the live charts and sell-through bars
// while fans (driven through the API) queue, hold and pay.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ADMIN_KEY, api, apiMember, launch, PHONE, shot, sleep, startServer, until, untilActive, waitText } from "../lib.mjs";

let server;
before(async () => {
  // A slow admission rate so the line is visible on the chart.
  server = await startServer({ CONCERT_QUEUE_TICK: "500ms", CONCERT_QUEUE_ADMIT_PER_TICK: "2" });
});
after(async () => {
  if (server) await server.stop();
});

test("the dashboard shows the sale moving", async () => {
  const browser = await launch();
  const { page } = browser;
  try {
    await page.goto(`${server.base}/admin`);
    await page.getByLabel("Admin key").fill("not-the-key");
    await page.getByRole("button", { name: "Open the dashboard" }).click();
    await waitText(page.locator("#notice"), /That admin key is not right/);
    await page.getByLabel("Admin key").fill(ADMIN_KEY);
    await page.getByRole("button", { name: "Open the dashboard" }).click();
    await waitText(page.locator("#dash-status"), /Live, updated every second/);
    await waitText(page.locator("#tile-db"), /healthy/);

    // Entered once: a reload goes straight to the dashboard.
    await page.reload();
    await waitText(page.locator("#dash-status"), /Live/);

    // Create a concert with the form.
    const form = page.locator("#create-form");
    await form.getByLabel("Title").fill("Browser Test Live");
    await form.getByLabel("Venue").fill("Test Hall");
    await form.getByLabel("Number of seats").fill("40");
    await form.getByLabel("Price (KRW)").fill("50000");
    await page.getByRole("button", { name: "Add a price tier" }).click();
    await form.getByLabel("From seat").fill("1");
    await form.getByLabel("To seat").fill("10");
    await form.locator(".tier-row input[name=tierPrice]").fill("90000");
    await page.getByRole("button", { name: "Create concert" }).click();
    const created = await waitText(page.locator("#notice"), /Concert no\. \d+ "Browser Test Live" created/);
    const id = Number(created.match(/no\. (\d+)/)[1]);
    const row = page.locator(`#sell li[data-concert="${id}"] .sold-text`);
    await waitText(row, /^0 sold, 0 on hold of 40 \(0%\)$/);

    // The sale: twenty fans queue; admitted two per tick, each holds two
    // seats and pays.
    const fans = [];
    for (let i = 0; i < 20; i++) fans.push(await apiMember(server.base, `fan${i}`, 500_000));
    await waitText(page.locator("#tile-waiting"), /^([1-9]\d*)$/, 5_000);
    await Promise.all(
      fans.map(async (fan, i) => {
        await untilActive(server.base, fan);
        const hold = await api(server.base, "POST", "/reservations", {
          token: fan.token,
          body: { concertId: id, seatNumbers: [2 * i + 1, 2 * i + 2] },
        });
        assert.equal(hold.status, 201, JSON.stringify(hold.body));
        await sleep(300);
        const paid = await api(server.base, "POST", "/payments", { token: fan.token, body: { reservationId: hold.body.id } });
        assert.equal(paid.status, 201, JSON.stringify(paid.body));
      }),
    );
    await waitText(row, /^40 sold, 0 on hold of 40 \(100%\)$/, 10_000);
    const charts = await page.locator("#chart-rates").getAttribute("aria-label");
    assert.match(charts, /Holds and payments per second/);
    // The charts drew the sale: some sample had payments per second > 0.
    await until(
      async () =>
        page.evaluate(() => {
          const c = document.getElementById("chart-rates");
          const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
          for (let i = 0; i < d.length; i += 4) if (d[i + 1] > 100 && d[i] < 60 && d[i + 2] < 100) return true; // the green line
          return false;
        }),
      "a payment line on the chart",
    );
    await shot(page, "dashboard-desktop", { fullPage: true });

    // A failing database (simulated in the answers the page gets) turns
    // the tile red and shades the journal chart behind the lines.
    await page.route("**/api/v1/admin/stats", async (route) => {
      const response = await route.fetch();
      const stats = await response.json();
      stats.database.healthy = false;
      await route.fulfill({ response, json: stats });
    });
    await waitText(page.locator("#tile-db"), /failing/);
    await until(
      async () => /database failing/.test(await page.locator("#chart-journal").getAttribute("aria-label")),
      "the journal chart saying the database fails",
    );
    await page.unroute("**/api/v1/admin/stats");
    await waitText(page.locator("#tile-db"), /healthy/);
    assert.deepEqual(browser.problems, []);
  } finally {
    await browser.close();
  }

  const phone = await launch({ locale: "ko-KR", viewport: PHONE });
  try {
    await phone.page.goto(`${server.base}/admin`);
    await phone.page.getByLabel("관리자 키").fill(ADMIN_KEY);
    await phone.page.getByRole("button", { name: "대시보드 열기" }).click();
    await waitText(phone.page.locator("#dash-status"), /실시간/);
    await sleep(2500);
    const width = await phone.page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `the dashboard is ${width}px wide on a 390px screen`);
    await shot(phone.page, "dashboard-phone-ko");
    assert.deepEqual(phone.problems, []);
  } finally {
    await phone.close();
  }
});
