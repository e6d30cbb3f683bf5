// Two browsers race for one seat: exactly one gets it, the other reads a
// sentence saying so (not JSON) and sees the seat taken on its map. An open
// map follows the other browser's holds without a reload.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launch, shot, startServer, until, waitText } from "../lib.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  if (server) await server.stop();
});

async function admitted(browser, name) {
  const { page } = browser;
  await page.goto(`${server.base}/`);
  const card = page.locator("li.concert", { hasText: "Seoul Philharmonic: Mahler 5" }).first();
  await card.getByRole("button", { name: /Join the queue/ }).click();
  await page.getByRole("textbox", { name: "Your name" }).fill(name);
  await page.getByRole("button", { name: "Join the queue" }).click();
  await page.locator('#seatmap button[data-n="40"]').waitFor({ timeout: 20_000 });
}

test("two browsers race for one seat and the loser sees a clear message", async () => {
  const [a, b] = await Promise.all([launch(), launch()]);
  try {
    await Promise.all([admitted(a, "Park"), admitted(b, "Choi")]);

    // The open map follows: A holds seat 5, B sees it held without a reload.
    await a.page.locator('#seatmap button[data-n="5"]').click();
    await a.page.getByRole("button", { name: "Hold these seats" }).click();
    await a.page.getByRole("heading", { name: "Pay for your seats" }).waitFor();
    await until(async () => /held/.test(await b.page.locator('#seatmap button[data-n="5"]').getAttribute("class")), "seat 5 held on B's map");
    assert.match(await b.page.locator('#seatmap button[data-n="5"]').getAttribute("aria-label"), /on hold/);
    await a.page.getByRole("button", { name: "Cancel hold" }).click();
    await a.page.locator('#seatmap button[data-n="40"]').waitFor();

    // Both pick seat 40 and press Hold at the same moment.
    for (const x of [a, b]) await x.page.locator('#seatmap button[data-n="40"]').click();
    await Promise.all([a, b].map((x) => x.page.getByRole("button", { name: "Hold these seats" }).click()));

    const outcome = async (x) => {
      for (;;) {
        if (await x.page.getByRole("heading", { name: "Pay for your seats" }).isVisible()) return "won";
        const notice = x.page.locator("#notice");
        if ((await notice.isVisible()) && /someone else/.test(await notice.textContent())) return "lost";
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const results = await Promise.all([outcome(a), outcome(b)]);
    assert.deepEqual([...results].sort(), ["lost", "won"], "exactly one browser gets the seat");
    const loser = results[0] === "lost" ? a : b;

    const text = await loser.page.locator("#notice").textContent();
    assert.equal(text, "Sorry, someone else just took one of those seats. Nothing was held — please pick other seats.");
    assert.ok(!/[{}]|SEAT_UNAVAILABLE/.test(text), "a sentence, not JSON");
    assert.equal(await loser.page.locator("#notice").getAttribute("role"), "alert", "read out by screen readers");
    // The loser's map shows the seat taken and nothing selected.
    await until(async () => /held/.test(await loser.page.locator('#seatmap button[data-n="40"]').getAttribute("class")), "seat 40 held on the loser's map");
    await waitText(loser.page.locator("#pick-summary"), /Select up to 4 seats/);
    await shot(loser.page, "race-loser-desktop");
    assert.deepEqual(a.problems, []);
    assert.deepEqual(b.problems, []);
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});
