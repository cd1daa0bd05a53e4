//! Reference server for livecast's benchmark (scripts/bench.sh): the same
//! protocol subset as livecast (subscribe with snapshot, position fan-out,
//! `POST /ingest`), written the way an async-Rust developer would write it:
//! tokio, one task per WebSocket connection, tokio-tungstenite, hyper for
//! HTTP, a bounded per-client mpsc queue, each position serialised once.
//!
//! Not part of the product. Ports come from `WS_PORT` and `HTTP_PORT`
//! (defaults 8080 and 9090), the address from `HOST` (127.0.0.1).
//!
//! Back-pressure as in livecast: when a client's queue (64 batches) is full
//! the client is closed with 1008; the publisher never waits for a client.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames of one ingest call for one event, shared by every subscriber.
type Batch = Arc<Vec<Utf8Bytes>>;

const QUEUE_CAPACITY: usize = 64;
/// SPEC §2: inbound frames above 4 KiB are refused.
const MAX_MESSAGE_BYTES: usize = 4096;

/// The one tuning livecast also does: clients only send tiny control
/// messages, so a 4 KiB read buffer instead of tungstenite's default
/// 128 KiB (which costs ~130 KiB of RSS per idle client).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(MAX_MESSAGE_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}
const MAX_SUBSCRIPTIONS: usize = 32;

struct Subscriber {
    tx: mpsc::Sender<Batch>,
    kill: Arc<Notify>,
}

#[derive(Default)]
struct Event {
    /// Latest `position` frame of each device, for snapshots.
    latest: HashMap<String, Utf8Bytes>,
    subscribers: HashMap<u64, Subscriber>,
}

#[derive(Default)]
struct State {
    events: Mutex<HashMap<String, Event>>,
    next_id: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let ws_port: u16 = std::env::var("WS_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let http_port: u16 =
        std::env::var("HTTP_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(9090);
    let state = Arc::new(State::default());

    let ws_listener = TcpListener::bind((host.as_str(), ws_port)).await?;
    let http_listener = TcpListener::bind((host.as_str(), http_port)).await?;
    println!("tokio-ref WebSocket: ws://{}/", ws_listener.local_addr()?);
    println!("tokio-ref HTTP: http://{}", http_listener.local_addr()?);

    tokio::spawn(serve_http(http_listener, state.clone()));
    loop {
        let (stream, peer) = match ws_listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_ws(stream, peer, state).await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

async fn handle_ws(
    stream: TcpStream,
    _peer: SocketAddr,
    state: Arc<State>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await?;
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Batch>(QUEUE_CAPACITY);
    let kill = Arc::new(Notify::new());
    let mut subscriptions: HashSet<String> = HashSet::new();

    let result = loop {
        tokio::select! {
            incoming = ws.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None => break Ok(()),
                    Some(Ok(_)) => continue, // pings are answered by tungstenite
                    Some(Err(e)) => break Err(e),
                };
                let reply = on_message(&text, id, &tx, &kill, &state, &mut subscriptions);
                if let Err(e) = ws.send(Message::Text(reply.into())).await {
                    break Err(e);
                }
            }
            batch = rx.recv() => {
                let Some(batch) = batch else { break Ok(()) };
                // Write everything that is queued, then flush once; give up
                // as soon as the publisher declares this client too slow.
                let write = async {
                    for frame in batch.iter() {
                        ws.feed(Message::Text(frame.clone())).await?;
                    }
                    while let Ok(more) = rx.try_recv() {
                        for frame in more.iter() {
                            ws.feed(Message::Text(frame.clone())).await?;
                        }
                    }
                    ws.flush().await
                };
                tokio::select! {
                    written = write => if let Err(e) = written { break Err(e) },
                    () = kill.notified() => break close_slow(&mut ws).await,
                }
            }
            () = kill.notified() => break close_slow(&mut ws).await,
        }
    };

    let mut events = state.events.lock().unwrap_or_else(|e| e.into_inner());
    for event_id in &subscriptions {
        if let Some(event) = events.get_mut(event_id) {
            event.subscribers.remove(&id);
        }
    }
    result
}

async fn close_slow(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let frame =
        CloseFrame { code: CloseCode::Policy, reason: "back-pressure threshold exceeded".into() };
    // The socket is full: try briefly, then drop the connection.
    let _ = tokio::time::timeout(Duration::from_millis(100), ws.close(Some(frame))).await;
    Ok(())
}

/// Handles one inbound text message; returns the answer to send.
fn on_message(
    text: &str,
    id: u64,
    tx: &mpsc::Sender<Batch>,
    kill: &Arc<Notify>,
    state: &State,
    subscriptions: &mut HashSet<String>,
) -> String {
    let error = |message: &str| {
        json!({"type": "error", "code": "protocol-violation", "message": message}).to_string()
    };
    let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(text) else {
        return error("invalid JSON");
    };
    let event_id = match msg.get("eventId").and_then(Value::as_str) {
        Some(e) if !e.is_empty() && e.chars().count() <= 128 => e.to_owned(),
        _ => return error("eventId must be a non-empty string of at most 128 characters"),
    };
    match msg.get("type").and_then(Value::as_str) {
        Some("subscribe") => {
            if !subscriptions.contains(&event_id) && subscriptions.len() >= MAX_SUBSCRIPTIONS {
                return json!({"type": "error", "code": "too-many-subscriptions",
                    "message": "too many subscriptions", "eventId": event_id})
                .to_string();
            }
            // Snapshot and registration under the lock the publisher takes:
            // the hand-over to the live stream is exact.
            let mut events = state.events.lock().unwrap_or_else(|e| e.into_inner());
            let event = events.entry(event_id.clone()).or_default();
            event.subscribers.insert(id, Subscriber { tx: tx.clone(), kill: kill.clone() });
            let mut out = String::with_capacity(64 + event.latest.len() * 160);
            out.push_str("{\"type\":\"subscribed\",\"eventId\":");
            out.push_str(&Value::String(event_id.clone()).to_string());
            out.push_str(",\"positions\":[");
            for (i, frame) in event.latest.values().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(frame);
            }
            out.push_str("]}");
            drop(events);
            subscriptions.insert(event_id);
            out
        }
        Some("unsubscribe") => {
            if subscriptions.remove(&event_id) {
                let mut events = state.events.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(event) = events.get_mut(&event_id) {
                    event.subscribers.remove(&id);
                }
            }
            json!({"type": "unsubscribed", "eventId": event_id}).to_string()
        }
        _ => error("unknown type"),
    }
}

async fn serve_http(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(req, state.clone()));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn route(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
        Ok(response)
    };
    if req.method() != Method::POST || req.uri().path() != "/ingest" {
        return reply(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into());
    }
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, r#"{"error":"bad body"}"#.into()),
    };
    let positions = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) => items,
        Ok(item @ Value::Object(_)) => vec![item],
        _ => return reply(StatusCode::BAD_REQUEST, r#"{"error":"invalid JSON"}"#.into()),
    };
    let (accepted, rejected) = ingest(positions, &state);
    reply(StatusCode::ACCEPTED, json!({"accepted": accepted, "rejected": rejected}).to_string())
}

/// Validates, serialises each position once, updates the latest-position
/// cache and fans each event's frames out as one batch per subscriber.
fn ingest(positions: Vec<Value>, state: &State) -> (usize, Vec<Value>) {
    let mut rejected = Vec::new();
    // Per event, in arrival order: (deviceId, frame).
    let mut by_event: Vec<(String, Vec<(String, Utf8Bytes)>)> = Vec::new();
    for (index, position) in positions.into_iter().enumerate() {
        match frame_of(position) {
            Ok((event_id, device_id, frame)) => {
                match by_event.iter_mut().find(|(e, _)| *e == event_id) {
                    Some((_, frames)) => frames.push((device_id, frame)),
                    None => by_event.push((event_id, vec![(device_id, frame)])),
                }
            }
            Err(error) => rejected.push(json!({"index": index, "error": error})),
        }
    }
    let mut accepted = 0;
    let mut events = state.events.lock().unwrap_or_else(|e| e.into_inner());
    for (event_id, frames) in by_event {
        accepted += frames.len();
        let event = events.entry(event_id).or_default();
        let mut batch = Vec::with_capacity(frames.len());
        for (device_id, frame) in frames {
            event.latest.insert(device_id, frame.clone());
            batch.push(frame);
        }
        let batch: Batch = Arc::new(batch);
        event.subscribers.retain(|_, subscriber| match subscriber.tx.try_send(batch.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                subscriber.kill.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
    (accepted, rejected)
}

fn frame_of(position: Value) -> Result<(String, String, Utf8Bytes), &'static str> {
    let Value::Object(fields) = position else { return Err("not an object") };
    let event_id = match fields.get("eventId").and_then(Value::as_str) {
        Some(e) if !e.is_empty() => e.to_owned(),
        _ => return Err("eventId required"),
    };
    let device_id = match fields.get("deviceId").and_then(Value::as_str) {
        Some(d) if !d.is_empty() => d.to_owned(),
        _ => return Err("deviceId required"),
    };
    let in_range = |name: &str, limit: f64| {
        fields.get(name).and_then(Value::as_f64).is_some_and(|v| (-limit..=limit).contains(&v))
    };
    if !in_range("lat", 90.0) || !in_range("lon", 180.0) {
        return Err("lat/lon missing or out of range");
    }
    if !fields.get("ts").is_some_and(Value::is_number) {
        return Err("ts required (milliseconds)");
    }
    let mut message = Map::with_capacity(fields.len() + 1);
    message.insert("type".into(), Value::from("position"));
    message.extend(fields);
    let frame = Value::Object(message).to_string();
    Ok((event_id, device_id, frame.into()))
}
