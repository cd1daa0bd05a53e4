// livecast.js: the client library of livecast, a WebSocket server of live
// GPS positions. One dependency-free ES module, no build step; types in
// livecast.d.ts. Served by every livecast at GET /livecast.js on its HTTP
// port, and used by livecast's own dashboard.
//
//   import { connect } from "http://127.0.0.1:9090/livecast.js";
//   const client = connect({ onStatus(state, detail) { ... } });
//   const sub = client.subscribe("demo-marathon", {
//     trail: 30,                            // optional: recent paths too
//     onSnapshot(devices, trails) { ... },  // Map deviceId -> position (and -> older positions)
//     onPosition(position, devices) { ... },
//     onError(error) { ... },               // {code, message, eventId}
//   });
//   const events = await client.events();   // [{eventId, devices, lastUpdate}] once connected
//
// What it does for the page (the reconnect rules of livecast's protocol):
// - reconnects with exponential backoff and full jitter: the delay before
//   retry n is uniform in [0, min(30 s, 1 s * 2^n)), so the first retry
//   comes within 1 s and a fleet of pages does not come back in step; the
//   count starts over once a connection stayed up 5 s;
// - a server that stops closes with 1001 "...; retry-after-ms=N": the next
//   attempt waits N ms plus up to 1 s of jitter, never less;
// - 4401 (session revoked or expired) stops: state "unauthorized" until
//   client.reconnect(); an upgrade refused before opening (browsers only
//   see 1006) is told apart by asking GET /auth/check, which answers 401
//   for credentials that will not do, and 403 {"error":"origin-refused"}
//   to a page the server's Origin rule refuses: state "refused" (detail
//   .rule "origin", .message says what to change), no retry either;
// - every subscription is sent again after a reconnect (with its `trail`),
//   and its devices (and trails) replaced by the fresh snapshot: no device
//   survives that the server no longer knows;
// - with `trail: N`, sub.trails holds each device's older positions
//   (oldest first, at most N) from the snapshot, and every live position
//   moves the device's previous latest onto its trail, so a page draws
//   paths without bookkeeping of its own;
// - a quiet connection is probed: after 25 s without any message it sends
//   {"type":"ping"}, and reconnects if nothing (pong or anything else)
//   comes within 10 s, because a dead TCP connection looks exactly like an
//   event where nothing moves.
//
// Every timing is an option of connect(), so tests can shorten them.

/** Defaults of the options of connect(). */
export const DEFAULTS = Object.freeze({
  backoffBaseMs: 1000,      // retry n waits up to backoffBaseMs * 2^n ...
  backoffMaxMs: 30_000,     // ... but never more than this
  stableAfterMs: 5000,      // connected this long: the backoff starts over
  retryAfterJitterMs: 1000, // added (0..this) to a 1001's retry-after-ms
  pingAfterMs: 25_000,      // silence before an application-level ping
  pongTimeoutMs: 10_000,    // no message this long after it: reconnect
  connectTimeoutMs: 10_000, // an upgrade not answered this long: retry
  authCheck: true,          // ask GET /auth/check when an upgrade fails
});

// Filled in by the livecast that serves this file (its WebSocket port, and
// the HTTP port it serves this file on). Anywhere else (a copy from npm)
// the placeholders stay, and the default URL is the page's host on port
// 8080, livecast's default.
const SERVED_WS_PORT = "{{WS_PORT}}";
const SERVED_HTTP_PORT = "{{HTTP_PORT}}";

/** The close code of a session that stopped validating: log in again. */
const CLOSE_UNAUTHORIZED = 4401;
/** The close code of a server that stops: come back after retry-after-ms. */
const CLOSE_GOING_AWAY = 1001;

/**
 * Opens a connection to livecast and keeps it open until close().
 * Returns at once; the first attempt starts in a microtask, so
 * subscriptions made right after connect() go out with it.
 */
export function connect(options = {}) {
  return new Client(options);
}

// Entry points between Client and Subscription, kept off their public API.
const RETIRE = Symbol("retire");
const SNAPSHOT = Symbol("snapshot");
const POSITION = Symbol("position");
const ERROR = Symbol("error");
const UNSUBSCRIBE = Symbol("unsubscribe");
const SENT = Symbol("sent");
const REFUSED = Symbol("refused");

export class Client {
  #options;
  #WebSocket;
  #url;
  #state = "connecting";
  #socket = null;
  #subscriptions = new Map(); // eventId -> Subscription
  #failures = 0;              // consecutive failed attempts, for the backoff
  #openedAt = 0;
  #generation = 0;            // bumped by reconnect() and close(): stale callbacks see it
  #timers = { retry: 0, connect: 0, idle: 0, pong: 0 };
  #pings = 0;
  #eventLists = [];           // events() calls waiting for their answer, oldest first

  constructor(options = {}) {
    this.#options = { ...DEFAULTS, ...withoutUndefined(options) };
    this.#WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("livecast: no WebSocket here: pass options.WebSocket");
    }
    this.#url = new URL(options.url || defaultUrl());
    if (this.#url.protocol !== "ws:" && this.#url.protocol !== "wss:") {
      throw new TypeError(`livecast: url must be ws: or wss:, not ${this.#url.protocol}`);
    }
    const generation = this.#generation;
    queueMicrotask(() => {
      if (generation === this.#generation) this.#open();
    });
  }

  /** "connecting" | "connected" | "retrying" | "unauthorized" | "refused" | "closed" */
  get state() {
    return this.#state;
  }

  /** The WebSocket URL (credentials in its query string included). */
  get url() {
    return this.#url.href;
  }

  /**
   * Subscribes to an event, now if connected, else as soon as connected,
   * and again after every reconnect. A second subscribe() to the same event
   * replaces the first subscription (which then gets nothing more).
   * `handlers.trail` (a whole number, optional) asks for each device's
   * recent path; a server whose LIVE_TRAIL_LENGTH is smaller refuses the
   * subscription with a protocol-violation (to onError).
   */
  subscribe(eventId, handlers = {}) {
    if (typeof eventId !== "string") throw new TypeError("livecast: eventId must be a string");
    const { trail } = handlers;
    if (trail !== undefined && !(Number.isSafeInteger(trail) && trail >= 0)) {
      throw new TypeError("livecast: trail must be a whole number (0 or more)");
    }
    this.#subscriptions.get(eventId)?.[RETIRE]();
    const sub = new Subscription(this, eventId, handlers);
    this.#subscriptions.set(eventId, sub);
    this.#subscribe(sub);
    return sub;
  }

  /**
   * The events that have positions and that this connection's user may
   * read, newest update first: a Promise of [{eventId, devices,
   * lastUpdate}] (at most 100; up to a second old). Rejects when not
   * connected, or when the connection drops before the answer.
   */
  events() {
    return new Promise((resolve, reject) => {
      if (!this.#send({ type: "events" })) {
        reject(new Error("livecast: not connected"));
        return;
      }
      this.#eventLists.push({ resolve, reject });
    });
  }

  /**
   * Drops the current connection, if any, and connects again at once with
   * the backoff reset: the way out of "unauthorized" (after a new login)
   * and the "retry now" of a page. Also reopens a closed client.
   */
  reconnect() {
    this.#generation++;
    this.#failures = 0;
    this.#drop();
    this.#open();
  }

  /** Closes the connection for good (until reconnect()); state "closed". */
  close() {
    this.#generation++;
    this.#drop();
    this.#setState("closed", { message: "closed by the page" });
  }

  // ---- the connection ---------------------------------------------------

  #open() {
    this.#drop();
    const where = this.#url.origin + this.#url.pathname; // never the query: it may hold a token
    this.#setState("connecting", { message: `connecting to ${where}`, attempt: this.#failures });
    let socket;
    try {
      socket = new this.#WebSocket(this.#url.href);
    } catch (e) {
      // A URL the browser refuses (a blocked port, say): no retry can fix it.
      this.#setState("closed", { message: `cannot open ${where}: ${e.message}` });
      return;
    }
    this.#socket = socket;
    let opened = false;
    this.#timers.connect = setTimeout(() => {
      this.#lost(socket, false, `no answer to the upgrade within ${this.#options.connectTimeoutMs} ms`);
    }, this.#options.connectTimeoutMs);
    socket.onopen = () => {
      if (socket !== this.#socket) return;
      opened = true;
      clearTimeout(this.#timers.connect);
      this.#openedAt = Date.now();
      this.#setState("connected", { message: `connected to ${where}` });
      for (const sub of this.#subscriptions.values()) this.#subscribe(sub);
      this.#heard();
    };
    socket.onmessage = (event) => {
      if (socket !== this.#socket) return;
      this.#heard();
      this.#onMessage(event.data);
    };
    socket.onclose = (event) => {
      if (socket !== this.#socket) return;
      this.#socket = null;
      this.#clearTimers();
      this.#failEventLists();
      this.#closed(event.code, event.reason || "", opened);
    };
    // An error is always followed by close, which decides what to do.
    socket.onerror = () => {};
  }

  /** Forgets the current socket (without waiting for its close) and every timer. */
  #drop() {
    this.#clearTimers();
    this.#failEventLists();
    const socket = this.#socket;
    this.#socket = null;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    try {
      socket.close(1000);
    } catch (_) {
      // Already closing.
    }
  }

  /** events() calls still waiting lose their connection: they fail. */
  #failEventLists() {
    for (const waiting of this.#eventLists.splice(0)) {
      waiting.reject(new Error("livecast: connection lost before the event list came"));
    }
  }

  #clearTimers() {
    for (const name of Object.keys(this.#timers)) {
      clearTimeout(this.#timers[name]);
      this.#timers[name] = 0;
    }
  }

  /**
   * The connection is dead without a close from the server (no pong, no
   * upgrade answer): a close handshake could take minutes, so drop it and
   * go on as if it had closed with 1006.
   */
  #lost(socket, opened, why) {
    if (socket !== this.#socket) return;
    this.#drop();
    this.#closed(1006, why, opened);
  }

  /** Any message: the connection is alive; the next ping is due later. */
  #heard() {
    clearTimeout(this.#timers.pong);
    clearTimeout(this.#timers.idle);
    this.#timers.pong = 0;
    const socket = this.#socket;
    this.#timers.idle = setTimeout(() => this.#ping(socket), this.#options.pingAfterMs);
  }

  #ping(socket) {
    if (socket !== this.#socket) return;
    this.#send({ type: "ping", id: ++this.#pings });
    this.#timers.pong = setTimeout(() => {
      this.#lost(socket, true, `no pong within ${this.#options.pongTimeoutMs} ms`);
    }, this.#options.pongTimeoutMs);
  }

  async #closed(code, reason, opened) {
    const generation = this.#generation;
    if (opened && Date.now() - this.#openedAt >= this.#options.stableAfterMs) this.#failures = 0;
    const detail = { code, reason, message: describeClose(code, reason) };
    if (code === CLOSE_UNAUTHORIZED) {
      this.#setState("unauthorized", detail);
      return;
    }
    if (!opened && code === 1006 && this.#options.authCheck && !reason) {
      // Refused before opening: the browser hides the HTTP status (401,
      // 403, 503 all read as 1006). /auth/check tells a login problem
      // from a server that is down or busy.
      const { status, error, message } = await this.#authCheck();
      if (generation !== this.#generation) return; // reconnect() or close() meanwhile
      if (error === "origin-refused") {
        // This page may not connect at all: no retry can change that, only
        // the server's configuration (or serving the page elsewhere).
        this.#setState("refused", {
          code, reason, authCheck: status, rule: "origin",
          message: message || "refused by the Origin rule",
        });
        return;
      }
      if (status === 401 || status === 403) {
        this.#setState("unauthorized", {
          code, reason, authCheck: status, message: `credentials refused (auth check: ${status})`,
        });
        return;
      }
      detail.authCheck = status;
      if (status) detail.message = `upgrade refused (auth check: ${status})`;
    }
    const retryAfter = code === CLOSE_GOING_AWAY ? retryAfterMs(reason) : null;
    this.#retry(detail, retryAfter);
  }

  /**
   * GET /auth/check with the same credentials: {status} (0 if unreachable),
   * with the `error` and `message` of a JSON answer (a page refused by the
   * Origin rule is told so, readably).
   */
  async #authCheck() {
    const url = new URL(this.#url.href);
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    url.pathname = url.pathname.replace(/[^/]*$/, "") + "auth/check";
    try {
      const response = await fetch(url.href, {
        credentials: "include",
        cache: "no-store",
        signal: AbortSignal.timeout?.(this.#options.connectTimeoutMs),
      });
      let body = {};
      if (/json/.test(response.headers.get("content-type") || "")) {
        body = await response.json().catch(() => ({}));
      }
      return {
        status: response.status,
        error: typeof body?.error === "string" ? body.error : undefined,
        message: typeof body?.message === "string" ? body.message : undefined,
      };
    } catch (_) {
      return { status: 0 }; // unreachable, or not allowed to read the answer (CORS)
    }
  }

  #retry(detail, retryAfter) {
    const { backoffBaseMs, backoffMaxMs, retryAfterJitterMs } = this.#options;
    let delayMs;
    if (retryAfter !== null) {
      // The server spread its clients' returns; never come back sooner.
      delayMs = retryAfter + Math.random() * retryAfterJitterMs;
      detail.retryAfterMs = retryAfter;
    } else {
      // Full jitter: uniform over [0, cap).
      const cap = Math.min(backoffMaxMs, backoffBaseMs * 2 ** Math.min(this.#failures, 30));
      delayMs = Math.random() * cap;
      this.#failures++;
    }
    detail.delayMs = Math.round(delayMs);
    detail.attempt = this.#failures;
    this.#setState("retrying", detail);
    this.#timers.retry = setTimeout(() => this.#open(), delayMs);
  }

  #subscribe(sub) {
    if (this.#send(subscribeMessage(sub))) sub[SENT]();
  }

  /** Sends when open; returns whether it did. */
  #send(message) {
    const socket = this.#socket;
    if (!socket || socket.readyState !== 1 /* OPEN */) return false;
    socket.send(JSON.stringify(message));
    return true;
  }

  #setState(state, detail) {
    this.#state = state;
    call(this.#options.onStatus, state, detail);
  }

  // ---- messages -----------------------------------------------------------

  #onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (_) {
      call(this.#options.onError, { code: "client", message: "the server sent a frame that is not JSON" });
      return;
    }
    if (msg === null || typeof msg !== "object") return;
    const sub = typeof msg.eventId === "string" ? this.#subscriptions.get(msg.eventId) : undefined;
    switch (msg.type) {
      case "subscribed":
        sub?.[SNAPSHOT](msg);
        break;
      case "position":
        sub?.[POSITION](msg);
        break;
      case "error": {
        const error = { code: String(msg.code ?? "error"), message: String(msg.message ?? "") };
        if (msg.eventId !== undefined) error.eventId = msg.eventId;
        // An error that names a subscribed event is that subscription's;
        // the rest (and every error when it has no onError) is the client's.
        if (!sub?.[ERROR](error)) call(this.#options.onError, error);
        break;
      }
      case "events": {
        const list = Array.isArray(msg.events) ? msg.events.filter((e) => e && typeof e.eventId === "string") : [];
        this.#eventLists.shift()?.resolve(list);
        break;
      }
      default:
        break; // pong, unsubscribed, and types a newer server may add
    }
  }

  /** Called by Subscription.unsubscribe(). */
  [UNSUBSCRIBE](sub) {
    if (this.#subscriptions.get(sub.eventId) !== sub) return;
    this.#subscriptions.delete(sub.eventId);
    // A subscribe the server refused left nothing to undo (and undoing an
    // invalid eventId would only earn a second error).
    if (!sub[REFUSED]) this.#send({ type: "unsubscribe", eventId: sub.eventId });
  }
}

export class Subscription {
  #client;
  #eventId;
  #handlers;
  #trail;               // positions per device asked for, or undefined
  #devices = new Map();
  #trails = undefined;  // deviceId -> older positions, when #trail is set
  #active = true;
  #answered = false; // a snapshot or an error came since the last subscribe was sent
  #refused = false;  // ... and it was an error

  constructor(client, eventId, handlers) {
    this.#client = client;
    this.#eventId = eventId;
    this.#handlers = handlers;
    this.#trail = handlers.trail;
    if (this.#trail !== undefined) this.#trails = new Map();
  }

  /** The event, as given to subscribe(). */
  get eventId() {
    return this.#eventId;
  }

  /**
   * The latest position of every device (Map deviceId -> position): the
   * last snapshot, updated by every live position. Each snapshot replaces
   * it with a new Map.
   */
  get devices() {
    return this.#devices;
  }

  /** The `trail` asked for in subscribe(), or undefined. */
  get trail() {
    return this.#trail;
  }

  /**
   * With a `trail`: each device's older positions (Map deviceId ->
   * positions, oldest first, at most `trail`, the latest, which is in
   * `devices`, not repeated); a device without older positions has no
   * entry. Each snapshot replaces it with a new Map; every live position
   * appends the device's previous latest to its trail (dropping the oldest
   * beyond `trail`). Undefined without a `trail`.
   */
  get trails() {
    return this.#trails;
  }

  /** False after unsubscribe(), or once another subscribe() replaced it. */
  get active() {
    return this.#active;
  }

  /** Stops the subscription; its devices Map stays as it was. */
  unsubscribe() {
    if (!this.#active) return;
    this.#active = false;
    this.#client[UNSUBSCRIBE](this);
  }

  // ---- called by the Client only ---------------------------------------

  [RETIRE]() {
    this.#active = false;
  }

  [SENT]() {
    this.#answered = this.#refused = false;
  }

  get [REFUSED]() {
    return this.#refused;
  }

  [SNAPSHOT](msg) {
    const devices = new Map();
    for (const p of Array.isArray(msg.positions) ? msg.positions : []) {
      if (p && typeof p.deviceId === "string") devices.set(p.deviceId, p);
    }
    this.#devices = devices;
    this.#answered = true;
    if (this.#trail === undefined) {
      call(this.#handlers.onSnapshot, devices);
      return;
    }
    // A server from before trails ignores `trail` and sends no `trails`:
    // then every device starts with an empty one.
    const trails = new Map();
    const sent = msg.trails !== null && typeof msg.trails === "object" ? msg.trails : {};
    for (const [deviceId, list] of Object.entries(sent)) {
      if (!Array.isArray(list)) continue;
      const trail = list.filter((p) => p !== null && typeof p === "object");
      if (trail.length > this.#trail) trail.splice(0, trail.length - this.#trail);
      if (trail.length > 0) trails.set(deviceId, trail);
    }
    this.#trails = trails;
    call(this.#handlers.onSnapshot, devices, trails);
  }

  [POSITION](p) {
    if (typeof p.deviceId !== "string") return;
    const previous = this.#devices.get(p.deviceId);
    this.#devices.set(p.deviceId, p);
    if (this.#trails && previous && this.#trail > 0) {
      // The position it replaces is now the newest of the older ones.
      let trail = this.#trails.get(p.deviceId);
      if (!trail) this.#trails.set(p.deviceId, (trail = []));
      trail.push(previous);
      if (trail.length > this.#trail) trail.splice(0, trail.length - this.#trail);
    }
    call(this.#handlers.onPosition, p, this.#devices);
  }

  /** Hands an error to onError; false when there is none. */
  [ERROR](error) {
    if (!this.#answered) this.#answered = this.#refused = true;
    if (typeof this.#handlers.onError !== "function") return false;
    call(this.#handlers.onError, error);
    return true;
  }
}

// ---- helpers ----------------------------------------------------------------

/** The subscribe message of a subscription, sent again on every resubscribe. */
function subscribeMessage(sub) {
  const message = { type: "subscribe", eventId: sub.eventId };
  if (sub.trail !== undefined) message.trail = sub.trail;
  return message;
}

/**
 * ws://<host>:<port>/: the host that served this module when a livecast
 * served it (its port filled in), else the page's host and port 8080.
 * A module loaded on another port than the one livecast serves it on came
 * through a reverse proxy (such as the operator kit's nginx), which
 * carries the WebSocket on / of that same origin: wss://<host>/.
 */
function defaultUrl() {
  const served = /^\d+$/.test(SERVED_WS_PORT);
  const base = served ? new URL(import.meta.url) : globalThis.location;
  if (!base || !/^https?:$/.test(base.protocol)) {
    throw new TypeError("livecast: no page to take the host from: pass options.url");
  }
  const scheme = base.protocol === "https:" ? "wss:" : "ws:";
  if (served && isProxied(base, SERVED_HTTP_PORT)) return `${scheme}//${base.host}/`;
  // URL.hostname keeps the brackets of an IPv6 address.
  return `${scheme}//${base.hostname}:${served ? SERVED_WS_PORT : "8080"}/`;
}

/** Whether `url` (http: or https:) is on another port than `servedPort`. */
function isProxied(url, servedPort) {
  if (!/^\d+$/.test(servedPort)) return false;
  const port = url.port || (url.protocol === "https:" ? "443" : "80");
  return port !== servedPort;
}

/** The N of "...; retry-after-ms=N" in a 1001's reason, or null. */
function retryAfterMs(reason) {
  const m = /retry-after-ms=(\d+)/.exec(reason);
  return m ? Number(m[1]) : null;
}

/** A line for a person, from a close code and reason. */
function describeClose(code, reason) {
  const what = reason || {
    1000: "closed by the server",
    1001: "server going away",
    1006: "connection lost",
    1008: "closed by the server's policy",
    1011: "server error",
    1013: "server overloaded",
    4401: "session no longer valid",
  }[code] || "closed";
  return `${what} (${code})`;
}

/** Calls a page's handler; its exception is reported, not let into the client's state. */
function call(handler, ...args) {
  if (typeof handler !== "function") return;
  try {
    handler(...args);
  } catch (e) {
    setTimeout(() => {
      throw e;
    });
  }
}

function withoutUndefined(object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined));
}
