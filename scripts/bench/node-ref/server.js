'use strict';
// Reference server for livecast's benchmark (scripts/bench.sh): the same
// protocol subset as livecast (subscribe with snapshot, position fan-out,
// POST /ingest), written the way the Node.js service that livecast replaces
// was written: the `ws` package, one JSON.stringify per client and message.
// Not part of the product. Ports from WS_PORT and HTTP_PORT, address HOST.

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const HOST = process.env.HOST || '127.0.0.1';
const WS_PORT = Number(process.env.WS_PORT || 8080);
const HTTP_PORT = Number(process.env.HTTP_PORT || 9090);
const PING_INTERVAL_MS = 30000;
const BACKPRESSURE_BYTES = 1024 * 1024;
const MAX_SUBSCRIPTIONS = 32;

// eventId -> { latest: Map(deviceId -> position), clients: Set(ws) }
const events = new Map();

function eventState(eventId) {
  let ev = events.get(eventId);
  if (!ev) {
    ev = { latest: new Map(), clients: new Set() };
    events.set(eventId, ev);
  }
  return ev;
}

function sendError(ws, code, message, eventId) {
  ws.send(JSON.stringify({ type: 'error', code, message, eventId }));
}

const wss = new WebSocketServer({ host: HOST, port: WS_PORT });

wss.on('connection', (ws) => {
  ws.isAlive = true;
  ws.subscriptions = new Set();
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('error', () => {});

  ws.on('message', (data, isBinary) => {
    ws.isAlive = true;
    let msg;
    try {
      msg = isBinary ? null : JSON.parse(data);
    } catch (e) {
      msg = null;
    }
    if (!msg || typeof msg !== 'object') {
      return sendError(ws, 'protocol-violation', 'invalid JSON');
    }
    const { type, eventId } = msg;
    if (typeof eventId !== 'string' || eventId.length === 0 || eventId.length > 128) {
      return sendError(ws, 'protocol-violation', 'eventId must be a non-empty string');
    }
    if (type === 'subscribe') {
      if (!ws.subscriptions.has(eventId) && ws.subscriptions.size >= MAX_SUBSCRIPTIONS) {
        return sendError(ws, 'too-many-subscriptions', 'too many subscriptions', eventId);
      }
      const ev = eventState(eventId);
      ev.clients.add(ws);
      ws.subscriptions.add(eventId);
      const positions = [...ev.latest.values()].map((p) => ({ type: 'position', ...p }));
      ws.send(JSON.stringify({ type: 'subscribed', eventId, positions }));
    } else if (type === 'unsubscribe') {
      const ev = events.get(eventId);
      if (ev) ev.clients.delete(ws);
      ws.subscriptions.delete(eventId);
      ws.send(JSON.stringify({ type: 'unsubscribed', eventId }));
    } else {
      sendError(ws, 'protocol-violation', 'unknown type');
    }
  });

  ws.on('close', () => {
    for (const eventId of ws.subscriptions) {
      const ev = events.get(eventId);
      if (ev) ev.clients.delete(ws);
    }
  });
});

// The usual `ws` heartbeat: ping everyone, drop who did not answer the last one.
const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, PING_INTERVAL_MS);
wss.on('close', () => clearInterval(heartbeat));

function validate(p) {
  if (!p || typeof p !== 'object' || Array.isArray(p)) return 'not an object';
  if (typeof p.eventId !== 'string' || !p.eventId) return 'eventId required';
  if (typeof p.deviceId !== 'string' || !p.deviceId) return 'deviceId required';
  if (typeof p.lat !== 'number' || p.lat < -90 || p.lat > 90) return 'lat out of range';
  if (typeof p.lon !== 'number' || p.lon < -180 || p.lon > 180) return 'lon out of range';
  if (typeof p.ts !== 'number') return 'ts required (milliseconds)';
  return null;
}

function broadcast(p) {
  const ev = eventState(p.eventId);
  ev.latest.set(p.deviceId, p);
  for (const ws of ev.clients) {
    if (ws.readyState !== WebSocket.OPEN) continue;
    if (ws.bufferedAmount > BACKPRESSURE_BYTES) {
      ws.close(1008, 'back-pressure threshold exceeded');
      ws.terminate();
      continue;
    }
    ws.send(JSON.stringify({ type: 'position', ...p }));
  }
}

const httpServer = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/ingest') {
    res.writeHead(404, { 'Content-Type': 'application/json' });
    return res.end('{"error":"not found"}');
  }
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', () => {
    let items;
    try {
      items = JSON.parse(body);
    } catch (e) {
      res.writeHead(400, { 'Content-Type': 'application/json' });
      return res.end('{"error":"invalid JSON"}');
    }
    if (!Array.isArray(items)) items = [items];
    let accepted = 0;
    const rejected = [];
    items.forEach((p, index) => {
      const error = validate(p);
      if (error) {
        rejected.push({ index, error });
        return;
      }
      accepted += 1;
      broadcast(p);
    });
    res.writeHead(202, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ accepted, rejected }));
  });
});
httpServer.keepAliveTimeout = 60000;
httpServer.listen(HTTP_PORT, HOST);

wss.on('listening', () => {
  const { address, port } = wss.address();
  console.log(`node-ref WebSocket: ws://${address}:${port}/`);
});
httpServer.on('listening', () => {
  const { address, port } = httpServer.address();
  console.log(`node-ref HTTP: http://${address}:${port}`);
});

function shutdown() {
  for (const ws of wss.clients) ws.terminate();
  wss.close();
  httpServer.close();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
