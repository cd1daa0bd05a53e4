//! `livecast-echo`: livecast's own acceptor, handshake and connection loop
//! with an echo handler in place of the live protocol, for the Autobahn
//! WebSocket conformance suite (`scripts/autobahn.sh`).
//!
//! Configured like `livecast` (environment variables); the defaults differ
//! where the suite needs them: messages up to 64 MiB (its 9.x cases send
//! 16 MiB) and no inbound rate limit (it sends thousands of frames at once);
//! the echo service also lifts the live protocol's limit of 16 fragments per
//! message (its 9.x cases send hundreds).

use std::process::ExitCode;

use livecast::{Config, Service};

fn main() -> ExitCode {
    let mut vars: Vec<(String, String)> = vec![
        ("LIVE_WS_MAX_MESSAGE_BYTES".into(), (64 << 20).to_string()),
        ("LIVE_WS_MAX_INBOUND_PER_SEC".into(), "1000000".into()),
        ("LIVE_WS_PORT".into(), "9001".into()),
        ("HTTP_PORT".into(), "0".into()),
    ];
    vars.extend(std::env::vars());
    let config = match Config::from_vars(vars) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("livecast-echo: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = livecast::logging::init(config.log_level, config.log_format) {
        eprintln!("livecast-echo: {e}");
        return ExitCode::from(1);
    }
    let server = match livecast::start_with(config, Service::Echo) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("livecast-echo: {e}");
            return ExitCode::from(1);
        }
    };
    println!("livecast-echo listening on ws://{}/", server.ws_addr());
    // Runs until killed: the conformance script stops it.
    loop {
        std::thread::park();
    }
}
