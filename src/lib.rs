//! livecast: a self-hosted WebSocket server that pushes live GPS positions.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

mod config;
mod thread;

pub use config::{AuthMode, Config, LogFormat, Secret};
