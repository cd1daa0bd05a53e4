// The operator kit's nginx snippet (scripts/ops/nginx-livecast.conf) in
// front of the real livecast, with a real nginx and a real headless
// Chromium.
//
// The shipped snippet is used as it is, adapted only in its ports (nginx
// on a free loopback port, livecast's two ports) and its certificate paths
// (a self-signed certificate made here with openssl). livecast runs as the
// snippet's comments say: LIVE_PUBLIC_HOSTS naming the public host,
// LIVE_TRUSTED_PROXIES naming nginx, INGEST_TOKEN set (and, in mode none,
// LIVE_AUTH_ALLOW_INSECURE=1). The dashboard is
// loaded through nginx and must connect (wss through nginx, found by the
// page itself) and show positions posted through nginx; /metrics and
// /debug/* must not be reachable through it.
//
// Run by scripts/browser-test.sh, which installs Debian's nginx and
// Chromium when they are missing. Environment: NGINX (default
// /usr/sbin/nginx), and those of support.mjs.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import net from "node:net";
import path from "node:path";
import {
  WAIT, bin, cleanUp, launchBrowser, outDir, root, scratch, startServer, stopServer,
} from "./support.mjs";

const nginxPath = process.env.NGINX || "/usr/sbin/nginx";
const INGEST_TOKEN = "nginx-test-ingest-token";
const PUBLIC_HOST = "localhost";

/** A free TCP port on `host` (closed again; nginx binds it right after). */
function freePort(host) {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, host, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Whether `host` can be bound here (::1 may be missing in a container). */
function canBind(host) {
  return freePort(host).then(() => true, () => false);
}

/**
 * The shipped snippet with its ports and certificate paths replaced, each
 * replacement asserted, so that a snippet changed in any other way than
 * these still runs here as it is.
 */
function adaptedSnippet({ port, wsPort, httpPort, cert, key, ipv6 }) {
  let text = readFileSync(path.join(root, "scripts/ops/nginx-livecast.conf"), "utf8");
  const swap = (from, to) => {
    assert.equal(text.split(from).length - 1, 1, `the snippet has exactly one ${JSON.stringify(from)}`);
    text = text.replace(from, to);
  };
  swap("listen 443 ssl;", `listen 127.0.0.1:${port} ssl;`);
  swap("listen [::]:443 ssl;", ipv6 ? `listen [::1]:${port} ssl;` : "");
  swap("server 127.0.0.1:8080;", `server 127.0.0.1:${wsPort};`);
  swap("server 127.0.0.1:9090;", `server 127.0.0.1:${httpPort};`);
  swap(/ssl_certificate +\S+;/.exec(text)[0], `ssl_certificate ${cert};`);
  swap(/ssl_certificate_key +\S+;/.exec(text)[0], `ssl_certificate_key ${key};`);
  return text;
}

/** Starts nginx in the foreground (stopped by PID); resolves once it answers. */
async function startNginx(dir, snippet, port) {
  mkdirSync(path.join(dir, "logs"), { recursive: true });
  writeFileSync(path.join(dir, "livecast.conf"), snippet);
  const asRoot = process.getuid?.() === 0;
  writeFileSync(path.join(dir, "nginx.conf"), `
${asRoot ? "user root;" : ""}
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log info;
events { worker_connections 256; }
http {
    access_log ${dir}/logs/access.log;
    client_body_temp_path ${dir}/body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;
    include ${dir}/livecast.conf;
}
`);
  // -t first: a broken snippet fails here with nginx's own words.
  execFileSync(nginxPath, ["-t", "-q", "-p", dir, "-e", `${dir}/logs/error.log`, "-c", `${dir}/nginx.conf`],
    { stdio: "pipe" });
  const child = spawn(nginxPath, ["-p", dir, "-e", `${dir}/logs/error.log`, "-c", `${dir}/nginx.conf`],
    { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (s) => { stderr += s; });
  const deadline = Date.now() + WAIT;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nginx exited with ${child.exitCode}: ${stderr}`);
    const up = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => { s.destroy(); resolve(true); });
      s.on("error", () => resolve(false));
    });
    if (up) return child;
    if (Date.now() > deadline) throw new Error(`nginx not listening within ${WAIT} ms: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One HTTPS request to nginx, trusting the test's own certificate. */
function request(port, ca, method, pathAndQuery, { headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: "127.0.0.1", port, method, path: pathAndQuery, ca, servername: PUBLIC_HOST,
      headers: { Host: `${PUBLIC_HOST}:${port}`, ...headers },
    }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (s) => { text += s; });
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, text }));
    });
    req.on("error", reject);
    req.setTimeout(WAIT, () => req.destroy(new Error(`${method} ${pathAndQuery}: no answer`)));
    req.end(body);
  });
}

let nginx;
let context;

after(async () => {
  await context?.close().catch(() => {});
  if (nginx && nginx.exitCode === null) nginx.kill("SIGTERM");
  cleanUp();
});

test("the dashboard behind the shipped nginx snippet", { timeout: 120_000 }, async (t) => {
  assert.ok(existsSync(bin), `${bin} missing: run cargo build first`);
  assert.ok(existsSync(nginxPath), `${nginxPath} missing: apt-get install nginx-light`);
  const dir = path.join(scratch, "nginx");
  mkdirSync(dir, { recursive: true });
  const cert = path.join(dir, "cert.pem"), key = path.join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "2", "-subj", `/CN=${PUBLIC_HOST}`,
    "-addext", `subjectAltName=DNS:${PUBLIC_HOST}`,
  ], { stdio: "pipe" });
  const ca = readFileSync(cert);

  // As the snippet's comments say (mode none, which behind a proxy must be
  // chosen explicitly).
  const server = await startServer({
    env: {
      LIVE_PUBLIC_HOSTS: PUBLIC_HOST,
      LIVE_TRUSTED_PROXIES: "127.0.0.1,::1",
      INGEST_TOKEN,
      LIVE_AUTH_ALLOW_INSECURE: "1",
    },
  });
  const port = await freePort("127.0.0.1");
  const ipv6 = await canBind("::1");
  nginx = await startNginx(dir, adaptedSnippet({
    port, wsPort: server.wsPort, httpPort: server.httpPort, cert, key, ipv6,
  }), port);
  const origin = `https://${PUBLIC_HOST}:${port}`;
  const ingest = async (positions, token = INGEST_TOKEN) => {
    const r = await request(port, ca, "POST", "/ingest", {
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify(positions),
    });
    return { status: r.status, body: r.text };
  };

  await t.test("proxies what browsers and trackers use, and nothing else", async () => {
    const page = await request(port, ca, "GET", "/");
    assert.equal(page.status, 200);
    assert.match(page.text, /<title>livecast/);
    for (const file of ["/livecast.js", "/livecast.d.ts"]) {
      const r = await request(port, ca, "GET", file);
      assert.equal(r.status, 200, file);
      assert.match(r.text, /connect/, file);
    }
    assert.equal((await request(port, ca, "GET", "/auth/check")).status, 204, "/auth/check");
    const noToken = await ingest([], "wrong");
    assert.equal(noToken.status, 401, `ingest without the token: ${noToken.body}`);
    // The tracker endpoints reach livecast (whatever it answers them), not
    // nginx's own 404.
    for (const tracker of ["/ingest/osmand?id=t-1&lat=46.5&lon=6.6", "/ingest/owntracks"]) {
      const r = await request(port, ca, tracker.includes("?") ? "GET" : "POST", tracker);
      assert.doesNotMatch(r.text, /<center>nginx/, `${tracker} reaches livecast (${r.status})`);
    }
    // Private: metrics, probes and debug stay on livecast's loopback port.
    for (const hidden of ["/metrics", "/debug/connections", "/healthz", "/readyz", "/nope"]) {
      const r = await request(port, ca, "GET", hidden);
      assert.equal(r.status, 404, hidden);
      assert.match(r.text, /<center>nginx/, `${hidden}: nginx's own 404, not livecast's`);
    }
  });

  await t.test("the dashboard connects through nginx and shows live positions", async () => {
    context = await launchBrowser("nginx-profile", { ignoreHTTPSErrors: true });
    const page = context.pages()[0] || (await context.newPage());
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    const event = "ng-race";
    const t0 = Date.now() - 5000;
    const before = await ingest([{ eventId: event, deviceId: "n-1", lat: 46.51, lon: 6.62, ts: t0 }]);
    assert.equal(before.status, 202, before.body);
    await page.goto(`${origin}/?event=${event}`);
    await page.waitForFunction(() => document.getElementById("state").textContent === "connected",
      null, { timeout: WAIT });
    // The page found the WebSocket through nginx by itself (no ?ws=).
    assert.match(await page.locator("#endpoint").textContent(), new RegExp(`wss://${PUBLIC_HOST}:${port}/`));
    await page.locator('#devices tr[data-device="n-1"]').waitFor({ timeout: WAIT });
    const live = await ingest([
      { eventId: event, deviceId: "n-1", lat: 46.512, lon: 6.622, ts: t0 + 2000, speed: 3.5 },
      { eventId: event, deviceId: "n-2", lat: 46.505, lon: 6.61, ts: t0 + 2500 },
    ]);
    assert.equal(live.status, 202, live.body);
    await page.waitForFunction(() => {
      const row = (id) => document.querySelector(`#devices tr[data-device="${id}"]`);
      return row("n-1")?.dataset.lat === "46.512" && row("n-2")?.dataset.lat === "46.505";
    }, null, { timeout: WAIT });
    await page.screenshot({ path: path.join(outDir, "nginx.png") });
    // The client library, imported from nginx's origin by a page of that
    // origin, defaults to the same wss:// URL.
    const url = await page.evaluate(async () => {
      const { connect } = await import("/livecast.js");
      const client = connect({});
      const href = client.url;
      client.close();
      return href;
    });
    assert.equal(url, `wss://${PUBLIC_HOST}:${port}/`);
    assert.deepEqual(pageErrors, []);
  });

  await stopServer(server);
});
