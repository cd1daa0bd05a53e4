// The client library, /livecast.js, in a real headless Chromium against the
// real binary (issue 14). No mocked WebSocket: every close, refusal and
// silence below is the server's own.
//
// The test page lives on another origin (a small server of this test, on
// its own port) and does nothing but import http://<livecast>/livecast.js,
// so the import itself proves the CORS headers. The page records what each
// client reports (states, snapshots, positions, errors) with timestamps;
// the test drives livecast from outside:
// - a page follows an event live (snapshot, then positions), with the
//   default URL the served library carries;
// - application-level pings keep a quiet connection up;
// - SIGTERM: 1001 with retry-after-ms=N, each client waits at least N ms,
//   then (a new server on the same ports) resumes with a fresh snapshot
//   that no longer holds the devices the new server does not know;
// - the server SIGSTOPped by PID: no pong, the client reconnects by itself
//   once the server runs again;
// - error frames reach the onError of the subscription they name (invalid
//   eventId; forbidden event in tokens mode);
// - tokens mode, token removed from the tokens file with a short
//   LIVE_AUTH_REVALIDATE_MS: 4401, "unauthorized", no reconnect until
//   client.reconnect(); a refused token is "unauthorized" at once too;
// - backoff against a port where nobody listens: each delay uniform below
//   a cap that doubles; a connection that stayed up resets it;
// - trails (issue 15): onSnapshot gets them, sub.trails grows with live
//   positions, and after a server restart holds the fresh snapshot's.
//
// Run by scripts/browser-test.sh (after dashboard.test.mjs).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { existsSync, writeFileSync } from "node:fs";
import path from "node:path";
import {
  WAIT, bin, chromiumPath, cleanUp, httpScheme, ingest, launchBrowser, scratch, startServer,
  stopServer, wsScheme,
} from "./support.mjs";

// Shortened timings: a ping after 400 ms of silence; the pong (and an
// upgrade's answer) may take 2 s, ample on a loaded machine.
const FAST = { pingAfterMs: 400, pongTimeoutMs: 2000, connectTimeoutMs: 2000 };

// ---- the page's origin -------------------------------------------------------

/** The test page: imports the library from `lib` and records every callback. */
function pageHtml(lib) {
  return `<!doctype html>
<meta charset="utf-8">
<title>livecast.js test page</title>
<script type="module">
import { connect } from ${JSON.stringify(lib)};
const now = () => Math.round(performance.now());
window.clients = {};
// A trail Map as plain data: deviceId -> the ts of its positions.
const plain = (trails) => trails === undefined ? "none"
  : Object.fromEntries([...trails].map(([id, list]) => [id, list.map((p) => p.ts)]));
// Starts a client named \`name\`, subscribed to \`events\` (with \`sub\`'s
// options, trail say); records everything.
window.start = (name, options, events, sub = {}) => {
  const rec = { statuses: [], snapshots: [], positions: [], errors: [], clientErrors: [], subs: {} };
  rec.client = connect({
    ...options,
    onStatus: (state, detail) => rec.statuses.push({ t: now(), state, ...detail }),
    onError: (e) => rec.clientErrors.push({ t: now(), ...e }),
  });
  for (const eventId of events) {
    rec.subs[eventId] = rec.client.subscribe(eventId, {
      ...sub,
      onSnapshot: (devices, trails) => rec.snapshots.push({
        t: now(), eventId, ids: [...devices.keys()].sort(), trails: plain(trails),
      }),
      onPosition: (p, devices) => rec.positions.push({ t: now(), eventId, deviceId: p.deviceId, lat: p.lat, size: devices.size }),
      onError: (e) => rec.errors.push({ t: now(), eventId, ...e }),
    });
  }
  window.clients[name] = rec;
};
// The plain data of a client's record.
window.record = (name) => {
  const { client, subs, ...data } = window.clients[name];
  const devices = Object.fromEntries(Object.entries(subs).map(([e, s]) => [e, [...s.devices.keys()].sort()]));
  const trails = Object.fromEntries(Object.entries(subs).map(([e, s]) => [e, plain(s.trails)]));
  const latest = Object.fromEntries(Object.entries(subs).map(([e, s]) =>
    [e, Object.fromEntries([...s.devices].map(([id, p]) => [id, p.ts]))]));
  return { ...data, state: client.state, url: client.url, devices, trails, latest };
};
window.ready = true;
</script>`;
}

let pageServer;
let pageOrigin;

async function startPageServer() {
  pageServer = createServer((req, res) => {
    const lib = new URL(req.url, "http://x").searchParams.get("lib") || "";
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" });
    res.end(pageHtml(lib));
  });
  await new Promise((resolve) => pageServer.listen(0, "127.0.0.1", resolve));
  pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;
}

// ---- helpers -------------------------------------------------------------------

let context;
let page;
const pageErrors = [];

async function openPage(server) {
  const lib = `${httpScheme}://${server.http}/livecast.js`;
  await page.goto(`${pageOrigin}/?lib=${encodeURIComponent(lib)}`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: WAIT });
}

// Every call into the page has a deadline: a page that stopped answering
// fails the test naming the call, instead of hanging it.
const start = (name, options, events, sub) => deadline(
  page.evaluate(([n, o, e, s]) => window.start(n, o, e, s), [name, options, events, sub]),
  `start of ${name}`);
const record = (name) => deadline(page.evaluate((n) => window.record(n), name), `record of ${name}`);
const call = (name, method) => deadline(
  page.evaluate(([n, m]) => window.clients[n].client[m](), [name, method]), `${name}.${method}()`);

/** Waits until `pred(record)` holds for client `name`; returns that record. */
async function waitFor(name, what, pred, timeout = WAIT) {
  const end = Date.now() + timeout;
  for (;;) {
    const rec = await record(name);
    if (pred(rec)) return rec;
    if (Date.now() > end) {
      assert.fail(`client ${name}: timed out waiting for ${what}\n${JSON.stringify(rec, null, 1).slice(0, 4000)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

const last = (list) => list[list.length - 1];

/** `promise`, or a failure naming `what` after `ms`. */
function deadline(promise, what, ms = WAIT) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function metric(server, name, labels) {
  const text = await (await fetch(`${httpScheme}://${server.http}/metrics`)).text();
  const want = `${name}{${Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(",")}}`;
  const line = text.split("\n").find((l) => l.startsWith(want + " "));
  return line ? Number(line.split(" ").pop()) : 0;
}

after(async () => {
  await context?.close().catch(() => {});
  pageServer?.close();
  cleanUp();
});

// ---- the tests -----------------------------------------------------------------

test("livecast.js in headless Chromium", { timeout: 180_000 }, async (t) => {
  assert.ok(existsSync(bin), `${bin} missing: run cargo build first`);
  assert.ok(existsSync(chromiumPath), `${chromiumPath} missing: apt-get install chromium`);
  await startPageServer();
  context = await launchBrowser("client-profile");
  page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (e) => pageErrors.push(e.message));
  const event = "cl-live";
  // Three clients are told to come back 0, 1 and 2 s after a stop.
  let server = await startServer({ env: { LIVE_WS_RECONNECT_SPREAD_MS: "3000" } });
  const t0 = Date.now();

  await t.test("a page that only imports livecast.js follows an event live", async () => {
    await ingest(server, [{ eventId: event, deviceId: "d-old", lat: 46.5, lon: 6.6, ts: t0 }]);
    await openPage(server);
    // No url: the served library points at its own server's WebSocket port.
    await start("a", FAST, [event]);
    let a = await waitFor("a", "the snapshot", (r) => r.snapshots.length === 1);
    assert.equal(a.url, `${wsScheme}://${server.ws}/`);
    assert.deepEqual(a.snapshots[0].ids, ["d-old"]);
    assert.equal(a.state, "connected");
    assert.deepEqual(a.statuses.map((s) => s.state), ["connecting", "connected"]);

    await ingest(server, [
      { eventId: event, deviceId: "d-1", lat: 46.51, lon: 6.61, ts: t0 + 1 },
      { eventId: event, deviceId: "d-1", lat: 46.52, lon: 6.62, ts: t0 + 2 },
      { eventId: "cl-other", deviceId: "x-1", lat: 1, lon: 1, ts: t0 },
    ]);
    a = await waitFor("a", "two positions", (r) => r.positions.length === 2);
    assert.deepEqual(a.positions.map((p) => [p.deviceId, p.lat, p.size]), [["d-1", 46.51, 2], ["d-1", 46.52, 2]]);
    assert.deepEqual(a.devices[event], ["d-1", "d-old"]);
    // Two more clients on the same event, for the drain below.
    await start("b", FAST, [event]);
    await start("c", FAST, [event]);
    for (const n of ["b", "c"]) {
      const r = await waitFor(n, "the snapshot", (x) => x.snapshots.length === 1);
      assert.deepEqual(r.snapshots[0].ids, ["d-1", "d-old"]);
    }
  });

  await t.test("pings keep a quiet connection up", async () => {
    const pongs = await metric(server, "livecast_outbound_messages_total", { type: "pong" });
    const before = await record("a");
    await page.waitForTimeout(2500); // quiet: nothing is posted
    const after = await record("a");
    assert.deepEqual(after.statuses, before.statuses, "no reconnect while quiet");
    assert.equal(after.state, "connected");
    const more = (await metric(server, "livecast_outbound_messages_total", { type: "pong" })) - pongs;
    // Three clients, one ping per 400 ms of silence each.
    assert.ok(more >= 6, `${more} pongs in 2.5 s`);
  });

  await t.test("a drain: each client waits retry-after-ms, then resumes with a fresh snapshot", async () => {
    const { wsPort, httpPort } = server;
    const seen = {};
    for (const n of ["a", "b", "c"]) seen[n] = (await record(n)).statuses.length;
    await stopServer(server);
    server = await startServer({ wsPort, httpPort });
    const asked = [];
    for (const n of ["a", "b", "c"]) {
      const r = await waitFor(n, "connected again with a fresh snapshot",
        (x) => x.state === "connected" && x.snapshots.length === 2);
      const statuses = r.statuses.slice(seen[n]);
      const drained = statuses[0];
      assert.equal(drained.state, "retrying", JSON.stringify(statuses));
      assert.equal(drained.code, 1001);
      assert.match(drained.reason, /retry-after-ms=\d+/);
      assert.equal(typeof drained.retryAfterMs, "number");
      asked.push(drained.retryAfterMs);
      assert.ok(drained.delayMs >= drained.retryAfterMs, `delay ${drained.delayMs} < ${drained.retryAfterMs}`);
      const next = statuses[1];
      assert.equal(next.state, "connecting");
      // setTimeout may round by a millisecond; the plan itself is >= N.
      assert.ok(next.t - drained.t >= drained.retryAfterMs - 2,
        `client ${n} came back after ${next.t - drained.t} ms, asked to wait ${drained.retryAfterMs}`);
      // The new server knows no device: the old ones are gone.
      assert.deepEqual(last(r.snapshots).ids, [], `client ${n}: stale devices survived`);
      assert.deepEqual(r.devices[event], []);
    }
    assert.deepEqual(asked.sort((x, y) => x - y), [0, 1000, 2000], "spread over 3 s");
    await ingest(server, [{ eventId: event, deviceId: "d-new", lat: 46.6, lon: 6.7, ts: Date.now() }]);
    for (const n of ["a", "b", "c"]) {
      const r = await waitFor(n, "d-new", (x) => x.devices[event].includes("d-new"));
      assert.deepEqual(r.devices[event], ["d-new"]);
    }
  });

  await t.test("no pong (server SIGSTOPped): reconnects once the server runs again", async () => {
    const seen = (await record("a")).statuses.length;
    const positions = (await record("a")).positions.length;
    server.child.kill("SIGSTOP");
    let a;
    try {
      a = await waitFor("a", "a retry for want of a pong",
        (x) => x.statuses.slice(seen).some((s) => s.state === "retrying"), 8000);
      await page.waitForTimeout(1000); // stopped a while longer: attempts time out too
    } finally {
      server.child.kill("SIGCONT");
    }
    const lost = a.statuses.slice(seen).find((s) => s.state === "retrying");
    assert.equal(lost.code, 1006);
    assert.match(lost.reason, /no pong within 2000 ms/);
    a = await waitFor("a", "connected again", (x) => x.state === "connected" && x.snapshots.length === 3);
    assert.deepEqual(last(a.snapshots).ids, ["d-new"]);
    await ingest(server, [{ eventId: event, deviceId: "d-new", lat: 46.61, lon: 6.7, ts: Date.now() }]);
    a = await waitFor("a", "live again", (x) => x.positions.length > positions);
    assert.equal(last(a.positions).lat, 46.61);
  });

  await t.test("error frames reach the onError of the subscription they name", async () => {
    const bad = "x".repeat(200); // longer than the protocol allows
    await start("e", {}, [event, bad]);
    const e = await waitFor("e", "an error", (x) => x.errors.length > 0 && x.snapshots.length > 0);
    assert.equal(e.errors.length, 1, JSON.stringify(e.errors));
    assert.equal(e.errors[0].eventId, bad, "routed to the subscription it names");
    assert.equal(e.errors[0].code, "protocol-violation");
    assert.ok(e.errors[0].message.length > 0);
    assert.deepEqual(e.clientErrors, []);
    assert.deepEqual(e.snapshots.map((s) => s.eventId), [event], "the valid subscription works");
    await page.evaluate(() => window.clients.e.subs["x".repeat(200)].unsubscribe());
    await page.evaluate(() => window.clients.e.client.close());
    await stopServer(server);
  });

  await t.test("tokens mode: forbidden reaches onError; 4401 stops until reconnect()", async () => {
    const tokens = path.join(scratch, "client-tokens.json");
    const grants = { "t-a": { user: "alice", events: [event] }, "t-keep": { user: "bob", events: ["*"] } };
    writeFileSync(tokens, JSON.stringify(grants));
    server = await startServer({
      env: { LIVE_AUTH_MODE: "tokens", LIVE_TOKENS_FILE: tokens, LIVE_AUTH_REVALIDATE_MS: "300" },
    });
    await openPage(server);
    const url = `${wsScheme}://${server.ws}/?access_token=t-a`;
    await start("t", { ...FAST, url }, [event, "cl-secret"]);
    let r = await waitFor("t", "snapshot and forbidden", (x) => x.snapshots.length === 1 && x.errors.length === 1);
    assert.equal(r.snapshots[0].eventId, event);
    assert.deepEqual(r.errors.map((e) => [e.eventId, e.code]), [["cl-secret", "forbidden"]]);

    // Revoke t-a: the next revalidation closes with 4401.
    const { "t-a": _, ...rest } = grants;
    writeFileSync(tokens, JSON.stringify(rest));
    r = await waitFor("t", "unauthorized", (x) => x.state === "unauthorized");
    const stop = last(r.statuses);
    assert.equal(stop.code, 4401);
    const count = r.statuses.length;
    await page.waitForTimeout(1500);
    r = await record("t");
    assert.equal(r.statuses.length, count, `no reconnect after 4401: ${JSON.stringify(r.statuses.slice(count))}`);
    assert.equal(r.state, "unauthorized");

    // reconnect() with the token still revoked: refused, and said so at once
    // (GET /auth/check), not retried.
    await call("t", "reconnect");
    r = await waitFor("t", "refused again", (x) => x.statuses.length > count + 1 && x.state === "unauthorized");
    assert.equal(last(r.statuses).authCheck, 401);
    // The token is back: reconnect() resumes, subscriptions included.
    writeFileSync(tokens, JSON.stringify(grants));
    await call("t", "reconnect");
    r = await waitFor("t", "connected again", (x) => x.state === "connected" && x.snapshots.length === 2);
    await call("t", "close");
    assert.equal((await record("t")).state, "closed");
    await stopServer(server);
  });

  await t.test("backoff: full jitter under a growing cap, reset by a stable connection", async () => {
    // A server's ports, then nobody there.
    server = await startServer();
    const { wsPort, httpPort } = server;
    await stopServer(server);
    const backoff = { backoffBaseMs: 100, backoffMaxMs: 400, stableAfterMs: 500 };
    await start("k", { ...FAST, ...backoff, url: `${wsScheme}://${server.ws}/` }, [event]);
    let k = await waitFor("k", "seven failed attempts",
      (x) => x.statuses.filter((s) => s.state === "retrying").length >= 7);
    const tries = k.statuses.filter((s) => s.state === "retrying");
    tries.forEach((s, i) => {
      const cap = Math.min(400, 100 * 2 ** i);
      assert.equal(s.attempt, i + 1, JSON.stringify(s));
      assert.ok(s.delayMs >= 0 && s.delayMs <= cap, `attempt ${i + 1}: ${s.delayMs} ms, cap ${cap}`);
    });
    for (let i = 0; i + 1 < k.statuses.length; i++) {
      const [s, next] = [k.statuses[i], k.statuses[i + 1]];
      if (s.state === "retrying") {
        assert.equal(next.state, "connecting");
        assert.ok(next.t - s.t >= s.delayMs - 2, `waited ${next.t - s.t} ms of ${s.delayMs}`);
      }
    }
    assert.ok(new Set(tries.map((s) => s.delayMs)).size > 1, "random delays");

    // Up for longer than stableAfterMs, then killed: the count starts over.
    server = await startServer({ wsPort, httpPort });
    k = await waitFor("k", "connected", (x) => x.state === "connected" && x.snapshots.length === 1);
    await page.waitForTimeout(700);
    const seen = k.statuses.length;
    const { child } = server;
    await deadline(new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      child.on("exit", resolve);
      child.kill("SIGKILL");
    }), "the killed server's exit");
    k = await waitFor("k", "a retry", (x) => x.statuses.slice(seen).some((s) => s.state === "retrying"));
    const again = k.statuses.slice(seen).find((s) => s.state === "retrying");
    assert.equal(again.code, 1006);
    assert.equal(again.attempt, 1, "backoff reset after a stable connection");
    assert.ok(again.delayMs <= 100, `${again.delayMs} ms`);
    await call("k", "close");
  });

  await t.test("trails: onSnapshot gets them, live positions extend sub.trails, a restart brings the fresh snapshot's", async () => {
    server = await startServer(); // LIVE_TRAIL_LENGTH: 30
    await openPage(server);
    const ev = "cl-trail";
    const t1 = Date.now() - 60_000;
    const times = (from, n) => Array.from({ length: n }, (_, i) => from + i * 1000);
    const at = (deviceId, ts) => ({ eventId: ev, deviceId, lat: 46.5 + (ts % 100_000) / 1e7, lon: 6.6, ts });
    // a: 8 positions, b: 1 (no older one), c: 3.
    await ingest(server, [
      ...times(t1, 8).map((ts) => at("a", ts)), at("b", t1 + 50), ...times(t1 + 100, 3).map((ts) => at("c", ts)),
    ]);
    await start("tr", FAST, [ev], { trail: 5 });
    await start("nt", FAST, [ev]);
    let r = await waitFor("tr", "the snapshot", (x) => x.snapshots.length === 1);
    assert.deepEqual(r.snapshots[0].ids, ["a", "b", "c"]);
    // At most 5 older ones, oldest first, the latest not repeated; b has none.
    const snapshotTrails = { a: times(t1 + 2000, 5), c: times(t1 + 100, 2) };
    assert.deepEqual(r.snapshots[0].trails, snapshotTrails);
    assert.deepEqual(r.trails[ev], snapshotTrails);
    const nt = await waitFor("nt", "the snapshot", (x) => x.snapshots.length === 1);
    assert.equal(nt.snapshots[0].trails, "none", "no trail asked: onSnapshot gets undefined");
    assert.equal(nt.trails[ev], "none", "no trail asked: sub.trails is undefined");

    // Live: each position moves the previous latest onto the trail, capped at 5.
    await ingest(server, [at("b", t1 + 10_000), at("b", t1 + 11_000), at("a", t1 + 12_000)]);
    r = await waitFor("tr", "three live positions", (x) => x.positions.length === 3);
    assert.deepEqual(r.trails[ev], { a: times(t1 + 3000, 5), b: [t1 + 50, t1 + 10_000], c: times(t1 + 100, 2) });
    assert.equal(r.snapshots.length, 1);

    // Over the server's LIVE_TRAIL_LENGTH: refused, to onError; a trail
    // that is not a whole number: a TypeError at once.
    await start("big", FAST, ["cl-big"], { trail: 31 });
    const big = await waitFor("big", "the refusal", (x) => x.errors.length === 1);
    assert.equal(big.errors[0].code, "protocol-violation");
    assert.match(big.errors[0].message, /at most 30/);
    assert.deepEqual(big.snapshots, []);
    const thrown = await page.evaluate(() => {
      try {
        window.clients.big.client.subscribe("cl-x", { trail: 1.5 });
        return "nothing";
      } catch (e) {
        return e.name;
      }
    });
    assert.equal(thrown, "TypeError");
    await call("big", "close");

    // A restart: the fresh snapshot (the new server knows nothing yet)
    // replaces every trail, re-asked with trail:5.
    const { wsPort, httpPort } = server;
    await stopServer(server);
    server = await startServer({ wsPort, httpPort });
    r = await waitFor("tr", "a fresh snapshot", (x) => x.state === "connected" && x.snapshots.length === 2);
    assert.deepEqual(last(r.snapshots).trails, {});
    assert.deepEqual(r.trails[ev], {}, "no trail from before the restart");
    const t2 = Date.now() - 10_000;
    await ingest(server, [...times(t2, 3).map((ts) => at("a", ts)), ...times(t2 + 500, 2).map((ts) => at("d", ts))]);
    r = await waitFor("tr", "the new server's positions",
      (x) => x.latest[ev].a === t2 + 2000 && x.latest[ev].d === t2 + 1500);
    const grown = { a: times(t2, 2), d: [t2 + 500] };
    assert.deepEqual(r.trails[ev], grown);
    // reconnect(): the next fresh snapshot's trails are what live positions built.
    await call("tr", "reconnect");
    r = await waitFor("tr", "the snapshot after reconnect()", (x) => x.snapshots.length === 3);
    assert.deepEqual(last(r.snapshots).trails, grown);
    assert.deepEqual(r.trails[ev], grown);
    assert.deepEqual(r.errors, []);
    await call("tr", "close");
    await call("nt", "close");
    await stopServer(server);
  });

  assert.deepEqual(pageErrors, [], "no uncaught exception in the page");
});
