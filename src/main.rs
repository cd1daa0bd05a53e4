//! The `livecast` binary: configuration from the environment, logging,
//! start, wait for SIGTERM/SIGINT, graceful stop, exit code, all on the
//! process's main thread.
//!
//! `livecast --demo` also starts the demo feed ([`livecast::demo`]) against
//! this server's own `POST /ingest`, and prints the dashboard URL.
//! `livecast --version` prints the version; `livecast --env-file` prints the
//! Debian package's commented environment file ([`livecast::Config::env_file`]),
//! which `scripts/package.sh` writes out before `cargo deb`.
//!
//! Exit codes: 0 after a graceful stop, 1 when the server cannot start,
//! 2 for a bad configuration or argument (before any port is bound).

use std::process::ExitCode;

use log::error;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let demo = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => false,
        ["-h" | "--help"] => {
            print!("{}", livecast::Config::help());
            return ExitCode::SUCCESS;
        }
        ["-V" | "--version"] => {
            println!("livecast {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        // Not in the usage: the packaging's own (scripts/package.sh).
        ["--env-file"] => {
            print!("{}", livecast::Config::env_file());
            return ExitCode::SUCCESS;
        }
        ["--demo"] => true,
        _ => {
            eprintln!(
                "livecast: unexpected arguments {args:?}: usage: livecast [--help | --version | --demo]; \
                 configuration is read from the environment, see --help"
            );
            return ExitCode::from(2);
        }
    };
    // Every configuration error at once (the demo's variables included),
    // before any port is bound.
    let config = match livecast::Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("livecast: {e}");
            return ExitCode::from(2);
        }
    };
    let demo_config = demo.then(|| livecast::demo::DemoConfig {
        devices: config.demo_devices,
        interval: config.demo_interval,
        ..livecast::demo::DemoConfig::default()
    });
    if let Err(e) = livecast::logging::init(config.log_level, config.log_format) {
        eprintln!("livecast: cannot set up logging: {e}");
        return ExitCode::from(1);
    }
    // Registered before the start, so that a signal during it is not lost.
    // SIGHUP reloads the TLS pair (the server's `tls-reload` thread has
    // its own handler); here it must only not stop the process.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let drain = config.drain_timeout;
    let ingest_token = config.ingest_token.clone();
    let server = match livecast::start(config) {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
            // An unusable TLS pair is a configuration error.
            let code = if matches!(e, livecast::StartError::Tls(_)) { 2 } else { 1 };
            return ExitCode::from(code);
        }
    };
    print_banner(&server);
    let demo = match demo_config {
        None => None,
        Some(demo_config) => {
            let https = server.schemes().1 == "https";
            let demo_config = livecast::demo::DemoConfig { ingest_token, https, ..demo_config };
            // Through the real ingest path: HTTP to our own port.
            let ingest = livecast::demo::reachable(server.http_addr());
            match livecast::demo::start(ingest, demo_config) {
                Ok(demo) => {
                    print_demo_banner(&server, &demo);
                    Some(demo)
                }
                Err(e) => {
                    error!("cannot start the demo feed: {e}");
                    server.stop(drain);
                    return ExitCode::from(1);
                }
            }
        }
    };
    let tls = server.schemes().0 == "wss";
    for signal in signals.forever() {
        if signal == SIGHUP {
            if !tls {
                log::info!("SIGHUP: nothing to reload (TLS is off)");
            }
            continue;
        }
        log::info!("signal {signal}: stopping");
        break;
    }
    // The feed first, so that it does not post into a stopping server.
    if let Some(demo) = demo {
        demo.stop();
    }
    server.stop(drain);
    ExitCode::SUCCESS
}

/// Tells where to watch the demo: the first line is the URL to open.
fn print_demo_banner(server: &livecast::Server, demo: &livecast::demo::Demo) {
    let events = demo.events();
    let first = events.first().copied().unwrap_or_default();
    let https = server.schemes().1 == "https";
    let url = livecast::demo::dashboard_url(server.http_addr(), first, https);
    println!("\n  Demo dashboard: {url}");
    for event in &events {
        let ids: Vec<&str> =
            demo.devices().iter().filter(|(e, _)| e == event).map(|(_, d)| d.as_str()).collect();
        println!("    {event}: {} devices ({})", ids.len(), ids.join(", "));
    }
}

/// Tells a newcomer where to connect and how to post a position.
fn print_banner(server: &livecast::Server) {
    let (ws, http) = (server.ws_addr(), server.http_addr());
    let (wss, https) = server.schemes();
    println!(
        "livecast {} is live\n  \
         WebSocket: {wss}://{ws}/\n  \
         HTTP:      {https}://{http}/  (/metrics /healthz /readyz /debug/connections, POST /ingest)\n\n  \
         Watch:  websocat {wss}://{ws}/   then send  {{\"type\":\"subscribe\",\"eventId\":\"demo\"}}\n  \
         Post:   curl -X POST {https}://{http}/ingest -H 'Content-Type: application/json' \\\n            \
         -d '{{\"eventId\":\"demo\",\"deviceId\":\"d-1\",\"lat\":46.52,\"lon\":6.63,\"ts\":'$(date +%s%3N)'}}'\n\n  \
         Stop with Ctrl-C (graceful: clients get close 1001).",
        env!("CARGO_PKG_VERSION")
    );
}
