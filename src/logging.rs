//! Log output through `fern`: `text` lines or one JSON object per line.
//!
//! Only `main` calls [`init`], on its own thread; the library only uses `log`
//! macros, and each line is formatted on the thread that logs it. Log lines
//! never carry tokens or cookies: no code logs a header value or a query.
//!
//! Every message's control characters are escaped here, in the formatter
//! (`escape_controls`), whoever logged it: peer-controlled text (an
//! event id, a path, a WebSocket payload that tungstenite logs verbatim at
//! `trace`) can never end a line and forge the next one (SPEC §9 "Logs").
//! One mechanism for every call site, the libraries' included.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// Installs the global logger, writing to stderr.
///
/// # Errors
/// When a logger is already installed.
pub fn init(level: log::LevelFilter, format: LogFormat) -> Result<(), log::SetLoggerError> {
    // The HTTP client logs whole requests, Authorization and Cookie
    // included, at trace level ("wire level debug, not redacted"): its
    // debug level redacts them, and is as far as it may go.
    let http_client = level.min(log::LevelFilter::Debug);
    let dispatch = fern::Dispatch::new()
        .level(level)
        .level_for("ureq", http_client)
        .level_for("ureq_proto", http_client)
        // The TLS library logs each failed handshake at `warn`: a scanner
        // would flood the log. livecast says why at `debug` itself.
        .level_for("rustls", level.min(log::LevelFilter::Error));
    let dispatch = match format {
        LogFormat::Text => dispatch.format(|out, message, record| {
            let message = message.to_string();
            out.finish(format_args!(
                "{} {:<5} [{}] {}: {}",
                rfc3339_now(),
                record.level(),
                std::thread::current().name().unwrap_or("?"),
                record.target(),
                escape_controls(&message)
            ));
        }),
        LogFormat::Json => dispatch.format(|out, message, record| {
            let line = serde_json::json!({
                "ts": rfc3339_now(),
                "level": record.level().as_str(),
                "thread": std::thread::current().name().unwrap_or("?"),
                "target": record.target(),
                "msg": escape_controls(&message.to_string()),
            });
            out.finish(format_args!("{line}"));
        }),
    };
    dispatch.chain(std::io::stderr()).apply()
}

/// `text` with every control character (C0, DEL, C1) and Unicode line or
/// paragraph separator written as a Rust escape (`\n`, `\u{1b}`), so that
/// one message stays one line whatever it quotes; borrowed when there is
/// nothing to escape (the common case).
pub(crate) fn escape_controls(text: &str) -> Cow<'_, str> {
    let needs = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs(c) {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A JSON error as its kind and place only (`invalid JSON at line 3 column
/// 7`), never serde's message, which quotes the value it choked on: in a
/// secrets file that value may be a token.
pub(crate) fn json_error_at(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Eof => "JSON cut short",
        serde_json::error::Category::Data => "unexpected JSON shape",
        serde_json::error::Category::Io => "read error",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// Now as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339_ms(u64::try_from(d.as_millis()).unwrap_or(0))
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // H. Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn controls_are_escaped_so_a_message_stays_one_line() {
        use super::escape_controls;
        assert!(matches!(escape_controls("plain ü text"), std::borrow::Cow::Borrowed(_)));
        let forged =
            "e\n2026-01-01T00:00:00.000Z INFO  [x] livecast: forged\r\u{1b}[2J\u{85}\u{2028}";
        let escaped = escape_controls(forged);
        assert!(!escaped.chars().any(|c| c.is_control() || c == '\u{2028}'), "{escaped}");
        assert_eq!(
            escaped,
            "e\\n2026-01-01T00:00:00.000Z INFO  [x] livecast: forged\\r\\u{1b}[2J\\u{85}\\u{2028}"
        );
    }

    #[test]
    fn timestamp_shape() {
        let t = super::rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
