// Shared by the browser tests (scripts/browser-test.sh): the real livecast
// binary on free ports, stopped by PID; positions posted to its ingest; the
// system's Chromium through playwright-core.
//
// Environment: LIVECAST_BIN (default target/debug/livecast), CHROMIUM
// (default /usr/bin/chromium), CARGO_TARGET_DIR; LIVECAST_TLS=1 runs every
// server with a self-signed pair made here (TLS_CERT_FILE, TLS_KEY_FILE:
// wss:// and https://), Chromium with --ignore-certificate-errors.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const targetDir = path.resolve(root, process.env.CARGO_TARGET_DIR || "target");
export const bin = process.env.LIVECAST_BIN || path.join(targetDir, "debug", "livecast");
export const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
export const scratch = mkdtempSync(path.join(tmpdir(), "livecast-browser-"));

// ---- TLS mode (LIVECAST_TLS=1) -----------------------------------------------

export const tls = process.env.LIVECAST_TLS === "1";
/** Screenshots: target/browser-test/, or target/browser-test-tls/. */
export const outDir = path.join(targetDir, tls ? "browser-test-tls" : "browser-test");
/** The HTTP port's scheme: `https` in TLS mode. */
export const httpScheme = tls ? "https" : "http";
/** The WebSocket port's scheme: `wss` in TLS mode. */
export const wsScheme = tls ? "wss" : "ws";
const tlsEnv = {};
if (tls) {
  const cert = path.join(scratch, "tls.crt");
  const key = path.join(scratch, "tls.key");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-keyout", key, "-out", cert,
  ], { stdio: "ignore" });
  tlsEnv.TLS_CERT_FILE = cert;
  tlsEnv.TLS_KEY_FILE = key;
  // This process's own fetch (ingest) trusts the self-signed pair too.
  process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
}
mkdirSync(outDir, { recursive: true });

export const WAIT = 15_000; // the longest any single expectation may take

// ---- the server ------------------------------------------------------------

const servers = new Set();

/** Starts livecast and resolves once its banner told where it listens. */
export function startServer({ wsPort = 0, httpPort = 0, env = {}, args = [] } = {}) {
  const child = spawn(bin, args, {
    env: {
      ...process.env,
      LIVE_WS_HOST: "127.0.0.1",
      HTTP_HOST: "127.0.0.1",
      LIVE_WS_PORT: String(wsPort),
      HTTP_PORT: String(httpPort),
      LIVE_WS_DRAIN_TIMEOUT_MS: "2000",
      LOG_LEVEL: "info",
      ...tlsEnv,
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  servers.add(child);
  const server = { child, stdout: "", stderr: "" };
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (s) => { server.stderr += s; });
  child.stdout.setEncoding("utf8");
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error("no banner within 15 s")), WAIT);
    const fail = (err) => {
      clearTimeout(timer);
      child.kill("SIGKILL");
      reject(new Error(`${err.message}\n--- stdout\n${server.stdout}\n--- stderr\n${server.stderr}`));
    };
    child.on("exit", (code) => fail(new Error(`livecast exited with ${code} before it was ready`)));
    child.on("error", fail);
    child.stdout.on("data", (s) => {
      server.stdout += s;
      const ws = /WebSocket:\s+wss?:\/\/([^\s/]+)\//.exec(server.stdout);
      const http = /HTTP:\s+https?:\/\/([^\s/]+)\//.exec(server.stdout);
      const demo = /Demo dashboard:\s+(\S+)/.exec(server.stdout);
      const wantsDemo = args.includes("--demo");
      if (ws && http && (!wantsDemo || (demo && /demo-rally/.test(server.stdout)))) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        server.ws = ws[1];
        server.http = http[1];
        server.wsPort = Number(ws[1].split(":").pop());
        server.httpPort = Number(http[1].split(":").pop());
        server.demoUrl = demo && demo[1];
        resolve(server);
      }
    });
  });
}

/** SIGTERM, then waits for the graceful stop; asserts exit code 0. */
export async function stopServer(server) {
  const { child } = server;
  if (child.exitCode !== null) return child.exitCode;
  const code = await new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), WAIT);
    child.on("exit", (c) => { clearTimeout(timer); resolve(c); });
    child.kill("SIGTERM");
  });
  servers.delete(child);
  assert.equal(code, 0, `livecast exit code\n${server.stderr}`);
  return code;
}

export async function ingest(server, positions) {
  const res = await fetch(`${httpScheme}://${server.http}/ingest`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(positions),
  });
  const body = await res.json();
  assert.equal(res.status, 202, JSON.stringify(body));
  assert.deepEqual(body, { accepted: positions.length, rejected: [], rejectedCount: 0 });
}

/**
 * Launches headless Chromium with a fresh profile under `scratch`;
 * returns the context. `options` go to Playwright's context (e.g.
 * ignoreHTTPSErrors for a test's self-signed certificate).
 */
export async function launchBrowser(name, options = {}) {
  const profile = path.join(scratch, name);
  // Playwright passes the fresh profile as --user-data-dir itself.
  return chromium.launchPersistentContext(profile, {
    // A test's own option (nginx's self-signed pair) wins over TLS mode's.
    ignoreHTTPSErrors: tls,
    ...options,
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1280, height: 760 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ...(tls ? ["--ignore-certificate-errors"] : []),
    ],
  });
}

/** Kills every server still running (by its PID) and removes `scratch`. */
export function cleanUp() {
  for (const child of servers) child.kill("SIGKILL");
  rmSync(scratch, { recursive: true, force: true });
}
