//! livecast's integration tests, compiled as one binary so that the 2-core
//! CI links once (ripgrep's `tests/tests.rs`).
//!
//! Every test starts its own server on free ports (in-process through
//! `livecast::start`, or the `livecast` executable where the process
//! boundary matters: environment, signals, exit codes, thread counts), talks
//! to it over real sockets, and waits with deadlines, never bare sleeps.
//! One module per SPEC area; `support` is the shared harness.

mod support;

mod answers; // SPEC §9 (second round): answers, cache bytes, frames, revalidation
mod auth; // SPEC §5: tokens mode, Origin check, GET /auth/check
mod backpressure; // SPEC §2.5, §9: write-through, write progress, queues, closing
mod broadcast; // SPEC §3-§4: snapshots, order, handover, back-pressure (§2.5)
mod client; // SPEC §1: the client library /livecast.js, /livecast.d.ts
mod debug; // SPEC §7: GET /debug/connections
mod demo; // livecast --demo: the simulator posts through POST /ingest
mod device_map; // SPEC §6: device→event map
mod directus; // SPEC §5-§6: mode directus (fake Directus), 4401 revalidation, map from Directus
mod heartbeat; // SPEC §2.3: frame-level pings, dead peers
mod hostile; // hardening: broken and hostile peers, no leaked threads
mod ingest; // SPEC §1, §4: the HTTP port and POST /ingest
mod lifecycle; // SPEC §2.6, §7: binary, configuration, shutdown
mod metrics; // SPEC §7: Prometheus metrics
mod ops; // operating it: refusals that say why, ingest answers, the event list, the README's commands
mod package; // SPEC §12: --version, the Debian package's environment file
mod protocol; // SPEC §2.4, §3: JSON messages, errors, limits
mod redis; // SPEC §4: the Redis Stream source, several instances
mod tls; // SPEC §11: TLS on both ports, reloads, bad pairs
mod trackers; // SPEC §10: OsmAnd / Traccar Client and OwnTracks endpoints
mod trails; // SPEC §3: device trails in the snapshot
mod transport; // SPEC §1-§2: WS port, handshake, limits, threads
