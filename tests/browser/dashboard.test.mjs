// The built-in dashboard in a real headless Chromium (issue 6, SPEC §8).
//
// Starts the real livecast binary on free ports, opens its dashboard, posts
// positions to POST /ingest and asserts from the page's DOM what a person
// would see: each device's trail drawn at once from the snapshot (issue 15),
// devices with their latest coordinates, the state "connected", server
// errors; then stops the server and starts it again on the same ports and
// asserts the page reconnected on its own and shows new positions, with
// trails from the new server only.
// Then tokens mode (?token=, and "log in again" from /auth/check), and the
// demo feed (`livecast --demo`) moving every device. Screenshots land in
// target/browser-test/.
//
// Run by scripts/browser-test.sh, which installs Chromium and builds
// livecast first. Environment: LIVECAST_BIN (default target/debug/livecast),
// CHROMIUM (default /usr/bin/chromium), LIVECAST_UPDATE_SCREENSHOT=1 to
// refresh the README's scripts/dashboard.png.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, existsSync, writeFileSync } from "node:fs";
import path from "node:path";
import {
  WAIT, bin, chromiumPath, cleanUp, httpScheme, ingest, launchBrowser, outDir, root, scratch,
  startServer, stopServer, tls, wsScheme,
} from "./support.mjs";

/** `steps` positions of one device on a gentle arc ending at `to`. */
function track(eventId, deviceId, to, steps, t0, extra = {}) {
  const out = [];
  for (let i = 0; i < steps; i++) {
    const back = steps - 1 - i;
    out.push({
      eventId, deviceId,
      lat: +(to.lat - back * 0.0009 + Math.sin(i / 2) * 0.0002).toFixed(6),
      lon: +(to.lon - back * 0.0012).toFixed(6),
      ts: t0 + i * 1000,
      ...extra,
    });
  }
  out[out.length - 1].lat = to.lat;
  out[out.length - 1].lon = to.lon;
  return out;
}

// ---- the browser -----------------------------------------------------------

let context;
let page;
const pageErrors = [];

async function openBrowser() {
  context = await launchBrowser("profile");
  page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (e) => pageErrors.push(e.message));
}

const stateOf = () => page.locator("#state").textContent();

async function waitForState(text) {
  await page.waitForFunction((t) => document.getElementById("state").textContent === t, text,
    { timeout: WAIT });
}

/** Waits until the row of every device shows `expected[device]`. */
async function waitForRows(expected) {
  await page.waitForFunction((exp) => Object.entries(exp).every(([id, p]) => {
    const row = document.querySelector(`#devices tr[data-device="${id}"]`);
    return row && Number(row.dataset.lat) === p.lat && Number(row.dataset.lon) === p.lon;
  }), expected, { timeout: WAIT });
  for (const [id, p] of Object.entries(expected)) {
    const row = page.locator(`#devices tr[data-device="${id}"]`);
    assert.equal(await row.locator("td.lat").textContent(), p.lat.toFixed(5), `${id} lat cell`);
    assert.equal(await row.locator("td.lon").textContent(), p.lon.toFixed(5), `${id} lon cell`);
    if (p.speed !== undefined) {
      // m/s on the wire, km/h with one decimal on the page.
      assert.equal(await row.locator("td.speed").textContent(), `${(p.speed * 3.6).toFixed(1)} km/h`,
        `${id} speed`);
    }
  }
}

const rowIds = () => page.$$eval("#devices tbody tr", (rows) => rows.map((r) => r.dataset.device));

/** Points of each device's trail line in the last frame drawn (the rows' data-trail). */
const trailPoints = () => page.$$eval("#devices tbody tr", (rows) =>
  Object.fromEntries(rows.map((r) => [r.dataset.device, Number(r.dataset.trail)])));

/** Waits until the dashboard drew exactly `expected` (deviceId -> points). */
async function waitForTrails(expected) {
  try {
    await page.waitForFunction((exp) => {
      const rows = [...document.querySelectorAll("#devices tbody tr")];
      return rows.length === Object.keys(exp).length &&
        rows.every((r) => Number(r.dataset.trail) === exp[r.dataset.device]);
    }, expected, { timeout: WAIT });
  } catch (e) {
    assert.deepEqual(await trailPoints(), expected, `trails drawn (${e.message})`);
  }
}

/** Pixels of the map that are not background: something was drawn. */
const paintedPixels = () => page.evaluate(() => {
  const c = document.getElementById("map");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - 11) + Math.abs(d[i + 1] - 17) + Math.abs(d[i + 2] - 23) > 120) n++;
  return n;
});

after(async () => {
  await context?.close().catch(() => {});
  cleanUp();
});

// ---- the tests -------------------------------------------------------------

test("dashboard in headless Chromium", { timeout: 180_000 }, async (t) => {
  assert.ok(existsSync(bin), `${bin} missing: run cargo build first`);
  assert.ok(existsSync(chromiumPath), `${chromiumPath} missing: apt-get install chromium`);
  await openBrowser();
  const event = "bt-race";
  let server = await startServer();
  const t0 = Date.now() - 60_000;

  await t.test("draws every device's trail at once from the snapshot", async () => {
    // Posted before the page opens: the subscribe's trail:30 must bring them.
    const ev = "bt-trail";
    const t1 = Date.now() - 90_000;
    await ingest(server, [
      ...track(ev, "tr-1", { lat: 46.51, lon: 6.62 }, 12, t1, { speed: 10 }),
      ...track(ev, "tr-2", { lat: 46.505, lon: 6.635 }, 40, t1 + 300, { speed: 12 }),
      { eventId: ev, deviceId: "tr-3", lat: 46.515, lon: 6.61, ts: t1 }, // no older position
    ].sort((a, b) => a.ts - b.ts));
    await page.goto(`${httpScheme}://${server.http}/?event=${ev}`);
    // tr-2 posted 40: the snapshot's trail holds the 30 before the latest.
    await waitForTrails({ "tr-1": 12, "tr-2": 31, "tr-3": 1 });
    assert.equal(await page.locator("#total").textContent(), "3", "the snapshot only, no live position");
    await page.screenshot({ path: path.join(outDir, "dashboard-trails.png") });

    // Live positions extend the snapshot's line: no duplicate at the hand-over.
    const now = Date.now();
    await ingest(server, [
      { eventId: ev, deviceId: "tr-1", lat: 46.5105, lon: 6.6212, ts: now },
      { eventId: ev, deviceId: "tr-3", lat: 46.5152, lon: 6.6104, ts: now },
      { eventId: ev, deviceId: "tr-3", lat: 46.5154, lon: 6.6108, ts: now + 1000 },
    ]);
    await waitForRows({ "tr-3": { lat: 46.5154, lon: 6.6108 } });
    await waitForTrails({ "tr-1": 13, "tr-2": 31, "tr-3": 3 });

    // The dashboard's own line grows past the snapshot's 30 (up to 240)...
    const more = track(ev, "tr-2", { lat: 46.5052, lon: 6.6365 }, 5, now);
    await ingest(server, more);
    await waitForTrails({ "tr-1": 13, "tr-2": 36, "tr-3": 3 });
    // ... and a reconnect's fresh snapshot replaces it: 30 older + latest.
    await page.evaluate(() => document.getElementById("reconnect").click()); // client.reconnect()
    await waitForTrails({ "tr-1": 13, "tr-2": 31, "tr-3": 3 });
    await waitForRows({ "tr-2": { lat: 46.5052, lon: 6.6365 } });
    assert.equal(await page.locator("#errors li").count(), 0, "no error shown");
  });

  await t.test("shows the snapshot, live positions, age and rate", async () => {
    // Before the page opens: must arrive in the subscribe's snapshot.
    await ingest(server, [{ eventId: event, deviceId: "d-0", lat: 46.5, lon: 6.6, ts: t0 }]);
    await page.goto(`${httpScheme}://${server.http}/?event=${event}`);
    await waitForState("connected");
    assert.equal(await page.locator("#event").inputValue(), event);
    await waitForRows({ "d-0": { lat: 46.5, lon: 6.6 } });

    const latest = {
      "d-1": { lat: 46.512345, lon: 6.621, speed: 12.3 },
      "d-2": { lat: 46.508, lon: 6.633333, speed: 8 },
      "d-3": { lat: 46.5151, lon: 6.6105, speed: 15.5 },
      "d-10": { lat: 46.503, lon: 6.6166 }, // no speed: the cell says so
    };
    const batch = Object.entries(latest)
      .flatMap(([id, p], k) => track(event, id, p, 8, t0 + k * 100,
        p.speed === undefined ? {} : { speed: p.speed, heading: 90 }))
      .sort((a, b) => a.ts - b.ts);
    // Another event's device must not show up.
    batch.push({ eventId: "bt-other", deviceId: "x-1", lat: 1, lon: 1, ts: t0 });
    await ingest(server, batch);
    await waitForRows(latest);
    assert.equal(await page.locator('#devices tr[data-device="d-10"] td.speed').textContent(), "–");
    assert.deepEqual(await rowIds(), ["d-0", "d-1", "d-2", "d-3", "d-10"], "sorted, numbers as numbers");
    assert.equal(await page.locator("#device-count").textContent(), "5");

    const age = () => page.locator('#devices tr[data-device="d-1"] td.age')
      .getAttribute("data-age-ms").then(Number);
    const before = await age();
    await page.waitForTimeout(1200);
    const later = await age();
    assert.ok(later - before >= 500, `age ticks up: ${before} -> ${later}`);
    assert.match(await page.locator('#devices tr[data-device="d-1"] td.age').textContent(), /^\d+ (s|min \d+ s)$/);
    assert.ok(Number(await page.locator("#rate").textContent()) > 0, "message rate counter");
    assert.ok(await paintedPixels() > 200, "dots, labels and trails drawn on the canvas");
    assert.equal(await stateOf(), "connected");
  });

  await t.test("shows server error messages; the event box resubscribes", async () => {
    await page.fill("#event", "x".repeat(200)); // longer than the protocol allows
    await page.click("#subscribe");
    const err = page.locator('#errors li[data-code="protocol-violation"]');
    await err.waitFor({ timeout: WAIT });
    assert.ok((await err.textContent()).length > "protocol-violation".length, "has a message");
    assert.equal(await page.locator("#devices tbody tr").count(), 0, "other event: table cleared");
    await page.fill("#event", event);
    await page.press("#event", "Enter");
    await waitForRows({ "d-2": { lat: 46.508, lon: 6.633333, speed: 8 } });
    assert.equal(await page.locator("#devices tbody tr").count(), 5, "snapshot has every device");
    assert.match(page.url(), /[?&]event=bt-race(&|$)/, "URL follows the event");
    while (await page.locator("#errors li").count() > 0) {
      await page.locator("#errors li button").first().click(); // dismiss
    }
  });

  await t.test("the bare page lists the events; an event without positions says so", async () => {
    await page.goto(`${httpScheme}://${server.http}/`);
    await page.locator('#event-list li[data-event="bt-race"]').waitFor({ timeout: WAIT });
    const listed = await page.$$eval("#event-list li", (lis) => lis.map((li) => li.dataset.event));
    assert.deepEqual(listed.sort(), ["bt-other", "bt-race", "bt-trail"]);
    assert.match(await page.locator('#event-list li[data-event="bt-race"]').textContent(),
      /^bt-race5 devices · updated \d+ (s|min \d+ s) ago$/);
    assert.match(await page.locator('#event-list li[data-event="bt-other"]').textContent(), /1 device ·/);
    await page.screenshot({ path: path.join(outDir, "dashboard-events.png") });
    // Picked from the list: one device, one position, said in the singular.
    await page.click('#event-list li[data-event="bt-other"] button');
    await waitForRows({ "x-1": { lat: 1, lon: 1 } });
    assert.equal(await page.locator("#event-list").isHidden(), true);
    assert.match(page.url(), /[?&]event=bt-other(&|$)/);
    assert.equal(await page.locator("#event").inputValue(), "bt-other");
    assert.equal(await page.locator(".stats").innerText().then((t) => t.replace(/\s+/g, " ").trim()),
      `${await page.locator("#rate").textContent()} msg/s 1 device 1 position`);
    // A typed event nobody posts to: the page says so and offers the
    // others; the counters start over.
    await page.fill("#event", "bt-nothing");
    await page.press("#event", "Enter");
    await page.waitForFunction(() => {
      const list = document.getElementById("event-list");
      return !list.hidden && list.dataset.emptyEvent === "bt-nothing" && list.querySelectorAll("li").length === 3;
    }, null, { timeout: WAIT });
    assert.match(await page.locator("#event-list p").textContent(), /No positions in event bt-nothing yet/);
    assert.equal(await page.locator("#total").textContent(), "0");
    assert.equal(await page.locator("#device-count").textContent(), "0");
    // Its first position replaces the list with the device.
    await ingest(server, [{ eventId: "bt-nothing", deviceId: "n-1", lat: 46.5, lon: 6.6, ts: Date.now() }]);
    await waitForRows({ "n-1": { lat: 46.5, lon: 6.6 } });
    assert.equal(await page.locator("#event-list").isHidden(), true);
    await page.goto(`${httpScheme}://${server.http}/?event=${event}`);
    await waitForState("connected");
    await waitForRows({ "d-2": { lat: 46.508, lon: 6.633333, speed: 8 } });
  });

  await t.test("reconnects and resubscribes after a server restart", async () => {
    const { wsPort, httpPort } = server;
    await stopServer(server);
    await page.waitForFunction(() => document.getElementById("state").textContent !== "connected",
      null, { timeout: WAIT });
    await page.waitForTimeout(500); // let it fail to connect at least once
    assert.match(await stateOf(), /^(retrying|connecting)$/);
    server = await startServer({ wsPort, httpPort });
    await waitForState("connected");
    const now = Date.now();
    await ingest(server, [
      ...track(event, "d-1", { lat: 46.52, lon: 6.64 }, 4, now - 4000, { speed: 14.2 }),
      ...track(event, "d-5", { lat: 46.5188, lon: 6.6077 }, 4, now - 4000, { speed: 9.9 }),
    ]);
    await waitForRows({
      "d-1": { lat: 46.52, lon: 6.64, speed: 14.2 },
      "d-5": { lat: 46.5188, lon: 6.6077, speed: 9.9 },
    });
    // The new server knows only these four positions of each: d-1's longer
    // line from before the restart is gone (whether the four came in the
    // fresh snapshot's trail or live, the line is the same).
    await waitForTrails({ "d-1": 4, "d-5": 4 });
    assert.equal(await stateOf(), "connected");
    assert.equal(await page.locator('#errors li').count(), 0, "no error shown");
    await page.waitForTimeout(300); // the view eases in
    await page.screenshot({ path: path.join(outDir, "dashboard.png") });
    await stopServer(server);
  });

  await t.test("tokens mode: ?token= connects, a refused token says log in again", async () => {
    const tokens = path.join(scratch, "tokens.json");
    writeFileSync(tokens, JSON.stringify({ "t-good": { user: "alice", events: ["*"] } }));
    server = await startServer({ env: { LIVE_AUTH_MODE: "tokens", LIVE_TOKENS_FILE: tokens } });
    await page.goto(`${httpScheme}://${server.http}/?event=${event}&token=t-good`);
    await waitForState("connected");
    await ingest(server, [{ eventId: event, deviceId: "d-7", lat: 46.51, lon: 6.62, ts: Date.now() }]);
    await waitForRows({ "d-7": { lat: 46.51, lon: 6.62 } });
    assert.ok(!(await page.content()).includes("t-good"), "the token is not shown");

    await page.goto(`${httpScheme}://${server.http}/?event=${event}&token=t-bad`);
    await waitForState("log in again");
    assert.match(await page.locator("#state-detail").textContent(), /token/);
    await page.waitForTimeout(1500);
    assert.equal(await stateOf(), "log in again", "no retry loop with a refused token");
    await stopServer(server);
  });

  await t.test("a shorter LIVE_TRAIL_LENGTH: the dashboard asks for that many", async () => {
    server = await startServer({ env: { LIVE_TRAIL_LENGTH: "3" } });
    await ingest(server, track("bt-short", "s-1", { lat: 46.51, lon: 6.62 }, 8, Date.now() - 20_000));
    await page.goto(`${httpScheme}://${server.http}/?event=bt-short`);
    // The page is served with the server's LIVE_TRAIL_LENGTH and asks for 3.
    await waitForTrails({ "s-1": 4 });
    assert.equal(await page.locator("#errors li").count(), 0, "nothing refused");
    assert.equal(await stateOf(), "connected");
    await stopServer(server);
  });

  await t.test("a page on another host name: the Origin rule says so, on the page and in the log", async () => {
    server = await startServer();
    // localhost and 127.0.0.1 are the same machine, but not the same host
    // name: the Origin rule (mode none) refuses the upgrade, which the
    // page sees as a bare 1006.
    await page.goto(`${httpScheme}://localhost:${server.httpPort}/?event=${event}&ws=${wsScheme}://127.0.0.1:${server.wsPort}/`);
    await waitForState("refused");
    const detail = await page.locator("#state-detail").textContent();
    assert.match(detail, /Origin rule/);
    assert.match(detail, /LIVE_WS_ALLOWED_ORIGINS/);
    await page.waitForTimeout(1500);
    assert.equal(await stateOf(), "refused", "no retry loop: only the configuration can change it");
    const deadline = Date.now() + WAIT;
    while (!/WARN.*refused by the Origin rule.*LIVE_WS_ALLOWED_ORIGINS/.test(server.stderr)) {
      assert.ok(Date.now() < deadline, `no warning in the log:\n${server.stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    // Told apart from "log in again" and from "server down": the same page
    // on the WebSocket URL's host name connects.
    await page.goto(`${httpScheme}://127.0.0.1:${server.httpPort}/?event=${event}`);
    await waitForState("connected");
    await stopServer(server);
  });

  await t.test("livecast --demo: every device moves", async () => {
    server = await startServer({ args: ["--demo"], env: { LIVE_DEMO_INTERVAL_MS: "500" } });
    assert.match(server.demoUrl, new RegExp(`^${httpScheme}://${server.http}/\\?event=demo-marathon$`));
    await page.goto(server.demoUrl);
    await waitForState("connected");
    // runner-4 reports as the OwnTracks app would (user "demo"), so its id
    // is "demo/runner-4"; the others post to /ingest or as Traccar Client.
    const runners = ["demo/runner-4", "runner-1", "runner-7", "runner-10"];
    await page.waitForFunction((n) => document.querySelectorAll("#devices tbody tr").length === n,
      runners.length, { timeout: WAIT });
    assert.deepEqual(await rowIds(), runners);
    const where = () => page.$$eval("#devices tbody tr", (rows) =>
      Object.fromEntries(rows.map((r) => [r.dataset.device, `${r.dataset.lat},${r.dataset.lon}`])));
    const first = await where();
    await page.waitForFunction((before) => [...document.querySelectorAll("#devices tbody tr")]
      .every((r) => `${r.dataset.lat},${r.dataset.lon}` !== before[r.dataset.device]),
    first, { timeout: WAIT });
    // The rally, picked in the box, makes the README's picture: fast cars
    // draw trails worth seeing within seconds.
    await page.fill("#event", "demo-rally");
    await page.press("#event", "Enter");
    const cars = ["car-3", "car-6", "car-9", "demo/car-12"]; // car-12: OwnTracks
    await page.waitForFunction((n) => document.querySelectorAll("#devices tbody tr").length === n,
      cars.length, { timeout: WAIT });
    assert.deepEqual(await rowIds(), cars);
    const start = await where();
    await page.waitForTimeout(12_000);
    const then = await where();
    for (const id of cars) assert.notEqual(then[id], start[id], `${id} moves`);
    // A page opened now draws each car's recent path at once: the first
    // frame with the cars has their snapshot trails (a line grown from live
    // positions only would have a point or two).
    await page.goto(`${httpScheme}://${server.http}/?event=demo-rally`);
    await page.waitForFunction((n) => {
      const rows = [...document.querySelectorAll("#devices tbody tr")];
      return rows.length === n && rows.every((r) => r.dataset.trail);
    }, cars.length, { timeout: WAIT });
    const drawn = await trailPoints();
    for (const id of cars) assert.ok(drawn[id] >= 15, `${id}: ${drawn[id]} trail points at once`);
    await page.screenshot({ path: path.join(outDir, "demo.png") });
    await stopServer(server);
    const committed = path.join(root, "scripts", "dashboard.png");
    if (!tls && (process.env.LIVECAST_UPDATE_SCREENSHOT === "1" || !existsSync(committed))) {
      copyFileSync(path.join(outDir, "demo.png"), committed);
    }
  });

  assert.deepEqual(pageErrors, [], "no uncaught exception in the page");
});
