//! The `livecast` binary: configuration from the environment, logging,
//! start, wait for SIGTERM/SIGINT, graceful stop, exit code.
//!
//! Exit codes: 0 after a graceful stop, 1 when the server cannot start,
//! 2 for a bad configuration or argument (before any port is bound).

use std::process::ExitCode;

use log::error;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("-h" | "--help") => {
            print!("{}", livecast::Config::help());
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!(
                "livecast: unknown argument {other:?}: configuration is read from the environment; see --help"
            );
            return ExitCode::from(2);
        }
    }
    let config = match livecast::Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("livecast: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = livecast::logging::init(config.log_level, config.log_format) {
        eprintln!("livecast: cannot set up logging: {e}");
        return ExitCode::from(1);
    }
    // Registered before the start, so that a signal during it is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let drain = config.drain_timeout;
    let server = match livecast::start(config) {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    print_banner(&server);
    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal}: stopping");
    }
    server.stop(drain);
    ExitCode::SUCCESS
}

/// Tells a newcomer where to connect and how to post a position.
fn print_banner(server: &livecast::Server) {
    let (ws, http) = (server.ws_addr(), server.http_addr());
    println!(
        "livecast {} is live\n  \
         WebSocket: ws://{ws}/\n  \
         HTTP:      http://{http}/  (/metrics /healthz /readyz /debug/connections, POST /ingest)\n\n  \
         Watch:  websocat ws://{ws}/   then send  {{\"type\":\"subscribe\",\"eventId\":\"demo\"}}\n  \
         Post:   curl -X POST http://{http}/ingest -H 'Content-Type: application/json' \\\n            \
         -d '{{\"eventId\":\"demo\",\"deviceId\":\"d-1\",\"lat\":46.52,\"lon\":6.63,\"ts\":'$(date +%s%3N)'}}'\n\n  \
         Stop with Ctrl-C (graceful: clients get close 1001).",
        env!("CARGO_PKG_VERSION")
    );
}
