// Types of livecast.js, the client library of livecast (served at
// GET /livecast.d.ts on livecast's HTTP port, next to /livecast.js).

/**
 * Where the connection is; see `ConnectOptions.onStatus`. "unauthorized":
 * log in again (4401, or credentials refused); "refused": the server's
 * Origin rule refuses this page (`detail.message` says what to change);
 * neither retries until reconnect().
 */
export type State = "connecting" | "connected" | "retrying" | "unauthorized" | "refused" | "closed";

/** What goes with a state change. Only `message` is always there. */
export interface StatusDetail {
  /** One line for a person (never holds the URL's query string). */
  message: string;
  /** The close code that led here (1006 for a lost connection). */
  code?: number;
  /** The close reason, or why the connection was given up. */
  reason?: string;
  /** "retrying": milliseconds until the next attempt. */
  delayMs?: number;
  /** "retrying" after a 1001: the `retry-after-ms` the server asked for. */
  retryAfterMs?: number;
  /** "connecting"/"retrying": consecutive failed attempts so far. */
  attempt?: number;
  /** The status of GET /auth/check after a refused upgrade (0: no answer). */
  authCheck?: number;
  /** "refused": the server rule that refused the page. */
  rule?: "origin";
}

/**
 * A position as livecast sends it: `deviceId`, `lat`, `lon`,
 * `ts` (milliseconds since the epoch), `eventId`, and every other field the
 * tracker sent (`speed`, `heading`, `alt`, `accuracy`, `battery`, ...).
 */
export interface Position {
  type?: "position";
  eventId?: string;
  deviceId: string;
  lat: number;
  lon: number;
  ts: number;
  speed?: number;
  heading?: number;
  alt?: number;
  accuracy?: number;
  battery?: number;
  [field: string]: unknown;
}

/** An `error` message of the server. */
export interface LivecastError {
  /**
   * "protocol-violation" | "forbidden" | "authz-unavailable" |
   * "too-many-subscriptions" | "internal", or "client" for a frame the
   * library could not read.
   */
  code: string;
  message: string;
  /** The event the error concerns, when it names one. */
  eventId?: string;
}

export interface ConnectOptions {
  /**
   * The WebSocket URL, credentials in its query string if any
   * (`?access_token=`). Default: `ws://` (`wss://` from an https page) on
   * the host that served livecast.js and the WebSocket port of that
   * livecast; for a copy not served by livecast, the page's host, port 8080.
   */
  url?: string;
  /** Called on every state change. */
  onStatus?(state: State, detail: StatusDetail): void;
  /** Errors that name no subscribed event (or whose subscription has no onError). */
  onError?(error: LivecastError): void;
  /** The WebSocket constructor, where there is no global one. */
  WebSocket?: typeof WebSocket;
  /** Retry n waits a uniform random time below min(backoffMaxMs, backoffBaseMs * 2^n). Default 1000. */
  backoffBaseMs?: number;
  /** Default 30000. */
  backoffMaxMs?: number;
  /** A connection up this long resets the backoff. Default 5000. */
  stableAfterMs?: number;
  /** Added, uniformly from 0 to this, to a 1001's retry-after-ms. Default 1000. */
  retryAfterJitterMs?: number;
  /** Silence before an application-level ping. Default 25000. */
  pingAfterMs?: number;
  /** No message this long after a ping: reconnect. Default 10000. */
  pongTimeoutMs?: number;
  /** An upgrade not answered this long (and GET /auth/check): give up, retry. Default 10000. */
  connectTimeoutMs?: number;
  /** Ask GET /auth/check when an upgrade fails before opening. Default true. */
  authCheck?: boolean;
}

/** Older positions per device: deviceId -> positions, oldest first. */
export type Trails = Map<string, Position[]>;

export interface SubscribeHandlers {
  /**
   * Ask for each device's recent path: at most this many older positions
   * per device (a whole number, 0 or more; `subscribe()` throws a
   * TypeError otherwise), sent with every (re)subscribe. More than the
   * server's `LIVE_TRAIL_LENGTH` (default 30) is refused: `onError` gets a
   * `protocol-violation` and nothing is subscribed.
   */
  trail?: number;
  /**
   * After every (re)subscribe: the fresh snapshot, which replaced `devices`
   * (and `trails`). `trails` is a Map when `trail` was asked (empty when
   * no device has older positions; a device without any has no entry),
   * and `undefined` when it was not.
   */
  onSnapshot?(devices: Map<string, Position>, trails: Trails | undefined): void;
  /** Each live position, `devices` already updated. */
  onPosition?(position: Position, devices: Map<string, Position>): void;
  /** The server's errors about this event (forbidden, ...). */
  onError?(error: LivecastError): void;
}

export declare const DEFAULTS: Readonly<Required<Omit<ConnectOptions, "url" | "onStatus" | "onError" | "WebSocket">>>;

export declare class Subscription {
  /** The event, as given to subscribe(). */
  readonly eventId: string;
  /** deviceId -> latest position; a new Map after each snapshot. */
  readonly devices: Map<string, Position>;
  /** The `trail` given to subscribe(), or undefined. */
  readonly trail: number | undefined;
  /**
   * With a `trail`: deviceId -> older positions, oldest first, at most
   * `trail`, the latest (in `devices`) not repeated; a new Map after each
   * snapshot, and each live position appends the device's previous latest
   * (the oldest beyond `trail` dropped). `undefined` without a `trail`.
   */
  readonly trails: Trails | undefined;
  /** False after unsubscribe(), or once another subscribe() to the event replaced it. */
  readonly active: boolean;
  unsubscribe(): void;
}

export declare class Client {
  constructor(options?: ConnectOptions);
  readonly state: State;
  /** The WebSocket URL in use. */
  readonly url: string;
  /**
   * The events with positions this connection's user may read, newest
   * update first (at most 100). Rejects when not connected.
   */
  events(): Promise<EventInfo[]>;
  /** Subscribes now or once connected, and again after every reconnect. */
  subscribe(eventId: string, handlers?: SubscribeHandlers): Subscription;
  /** Drops the connection and connects again at once, backoff reset (also out of "unauthorized", "refused" and "closed"). */
  reconnect(): void;
  /** Closes for good (until reconnect()). */
  close(): void;
}

/** One entry of Client.events(). */
export interface EventInfo {
  eventId: string;
  /** Devices whose latest position is in this event. */
  devices: number;
  /** The newest `ts` among them (milliseconds since the epoch). */
  lastUpdate: number;
}

/** Opens a connection and keeps it open until close(). */
export declare function connect(options?: ConnectOptions): Client;
