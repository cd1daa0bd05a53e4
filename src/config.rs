//! Every setting of livecast, read from the environment (SPEC §7).
//!
//! Two stages, as in ripgrep's flags: [`Config::from_vars`] is a pure
//! function from `(name, value)` pairs to a validated [`Config`], reporting
//! every bad variable at once in one [`ConfigError`]; [`Config::from_env`] is
//! the thin wrapper that feeds it the process environment. `Config::default()`
//! is the embedded mode: HTTP ingest, no Redis, auth `none`, loopback only.
//!
//! One table (the `config_table!` invocation below) holds one entry per
//! variable: its field, type, name, default, parser, field doc and help
//! line. The macro expands it into the [`Config`] struct, its `Default` and
//! `GROUPS`, which parsing and `livecast --help` ([`Config::help`]) both
//! walk; so a variable cannot be parsed without being documented, and its
//! default is written once: `Default` parses the very text that help shows.
//! The demo's variables (`LIVE_DEMO_*`) are in the table too.
//!
//! Only `main` calls into this module, once, before any thread is spawned.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::proxy::TrustedProxies;

/// A secret read from the environment (a token, a URL with a password).
///
/// Its `Debug` prints `***`, so a `{:?}` of the config can never leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself: only for comparing or forwarding, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How upgrades are authenticated and subscribes authorized (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Everyone is `anonymous` and may subscribe to anything.
    None,
    /// Bearer tokens from `LIVE_TOKENS_FILE`.
    Tokens,
    /// Credentials checked against a Directus instance.
    Directus,
}

/// Log line format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Builds a validated [`Config`] from `(name, value)` pairs, starting
    /// from [`Config::default()`].
    ///
    /// Pure, so tests can feed it any environment: it reads no file and binds
    /// nothing (`LIVE_TOKENS_FILE` and `LIVE_DEVICE_EVENT_FILE` are only named
    /// here; their owners read them at start). Names are case-sensitive, as in
    /// the environment; unknown names are ignored, because the environment
    /// holds much that is not ours. Values are trimmed, and an empty value
    /// counts as unset (`FOO=` in a compose file usually means "not set"), so
    /// string settings such as `LIVE_STREAM_KEY` can never end up empty. When
    /// a name appears twice, the last value wins.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] listing every bad variable, not only the first, so
    /// that an operator fixes them all in one round.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = livecast::Config::from_vars([("LIVE_WS_PORT", "0")]).unwrap();
    /// assert_eq!(config.ws_port, 0);
    ///
    /// let vars = [("LIVE_WS_PORT", "http"), ("PATH", "/bin"), ("LOG_LEVEL", "loud")];
    /// let err = livecast::Config::from_vars(vars).unwrap_err();
    /// assert_eq!(err.variables().collect::<Vec<_>>(), ["LIVE_WS_PORT", "LOG_LEVEL"]);
    /// ```
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut given = HashMap::new();
        for (name, value) in vars {
            if let Some(var) = find_var(name.as_ref()) {
                given.insert(var.name, Raw::Text(value.as_ref().to_owned()));
            }
        }
        build(given)
    }

    /// [`Config::from_vars`] over the process environment.
    ///
    /// Reads `std::env::vars_os()` rather than `vars()`, which panics on a
    /// value that is not UTF-8: such a value is reported as a bad variable if
    /// the name is one of ours, and ignored otherwise.
    ///
    /// # Errors
    ///
    /// As [`Config::from_vars`].
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut given = HashMap::new();
        for (name, value) in std::env::vars_os() {
            // A name that is not UTF-8 cannot be one of ours: all are ASCII.
            let Some(var) = name.to_str().and_then(find_var) else { continue };
            let raw = value.into_string().map_or(Raw::NotUnicode, Raw::Text);
            given.insert(var.name, raw);
        }
        build(given)
    }

    /// The text `livecast --help` prints: what livecast is, its usage, and
    /// every variable with its default and meaning, grouped by component.
    ///
    /// Generated from the same table that [`Config::from_vars`] parses with,
    /// so a variable cannot be recognised without being documented here.
    pub fn help() -> String {
        let mut out = format!(
            "livecast {version}: live GPS positions over WebSocket.\n\
             \n\
             livecast pushes the live positions of tracked devices to dashboard\n\
             clients. Positions come from a Redis Stream (REDIS_URL) and/or from\n\
             POST /ingest on the HTTP port; a client subscribes to an event, gets\n\
             the latest position of each of its devices, then every new one as it\n\
             arrives. The HTTP port also serves /metrics, /healthz, /readyz,\n\
             /debug/connections and a built-in dashboard at /.\n\
             \n\
             Usage: livecast [--help | --version | --demo]\n\
             \n\
             --demo also starts a simulator feeding this server (see the end).\n\
             There are no other arguments and no configuration file: livecast is\n\
             configured by the environment variables below only. Values are\n\
             trimmed, and an empty value counts as unset. *_MS values are whole\n\
             milliseconds. Every invalid variable is reported at once, and\n\
             livecast then exits with code 2 before binding any port. SIGTERM or\n\
             SIGINT stops it gracefully.\n",
            version = env!("CARGO_PKG_VERSION"),
        );
        for group in GROUPS {
            out.push('\n');
            out.push_str(group.title);
            out.push_str(":\n");
            for line in group.intro.iter().flat_map(|intro| intro.lines()) {
                out.push_str(&format!("  {line}\n"));
            }
            for var in group.vars {
                let default = match var.default {
                    HelpDefault::Is(value) => format!("={value}"),
                    HelpDefault::Unset => " (unset)".to_owned(),
                    HelpDefault::Computed(how) => format!(" (default: {how})"),
                };
                let secret = if var.secret { " [secret: never logged]" } else { "" };
                out.push_str(&format!("  {}{default}{secret}\n      {}\n", var.name, var.meaning));
            }
        }
        out
    }

    /// The environment file of the Debian package, `/etc/livecast/livecast.env`
    /// (`livecast --env-file` prints it; `scripts/package.sh` packages it):
    /// every variable of [`Config::help`], commented out, with its default
    /// and its help line, in help order.
    ///
    /// Generated from the same table as `--help`, so the file an operator
    /// edits cannot miss a variable or show another default. It carries no
    /// version: it changes only when the table does, so an upgrade that
    /// adds no variable never asks about an edited copy. The format suits
    /// both systemd's `EnvironmentFile=` and a shell's `set -a; . file`.
    pub fn env_file() -> String {
        let mut out = String::from(
            "# livecast's configuration, read by livecast.service (EnvironmentFile=).\n\
             #\n\
             # livecast is configured by environment variables only. Every one it\n\
             # reads is listed below, commented out, with its default and what it\n\
             # does. To change one, remove the leading '#' of its NAME=value line\n\
             # and edit the value (one NAME=value per line, no spaces around '=',\n\
             # an empty value counts as unset), then: systemctl restart livecast\n\
             # A bad value stops the start with a message naming the variable:\n\
             # journalctl -u livecast. `livecast --help` has the same list.\n\
             #\n\
             # Readable by root and the livecast group only (0640): it may hold\n\
             # secrets (INGEST_TOKEN, DEBUG_TOKEN, REDIS_URL, DIRECTUS_TOKEN).\n\
             # Package upgrades keep the edits made here.\n",
        );
        for group in GROUPS {
            out.push_str(&format!("\n\n## {}\n", group.title));
            for line in group.intro.iter().flat_map(|intro| intro.lines()) {
                out.push_str(&format!("# {line}\n"));
            }
            for var in group.vars {
                out.push_str(&format!("\n# {}\n", var.meaning));
                if var.secret {
                    out.push_str("# A secret: never logged.\n");
                }
                let (note, value) = match var.default {
                    HelpDefault::Is(value) => (String::new(), value),
                    HelpDefault::Unset => ("# Unset by default.\n".to_owned(), ""),
                    HelpDefault::Computed(how) => (format!("# Default: {how}.\n"), ""),
                };
                out.push_str(&format!("{note}#{}={value}\n", var.name));
            }
        }
        out
    }
}

/// Every bad variable found by [`Config::from_vars`] or [`Config::from_env`].
///
/// `Display` prints `invalid configuration:` and then one indented line per
/// bad variable, `NAME="value": what was expected`, in the order of
/// `livecast --help`. The values of secrets (`INGEST_TOKEN`, `DIRECTUS_TOKEN`,
/// `REDIS_URL`) show as `NAME=<redacted>`, in `Debug` as well, so the error
/// is safe to print and log as is.
#[derive(Debug)]
pub struct ConfigError {
    /// At least one; in table order, cross-variable rules last.
    problems: Vec<Problem>,
}

impl ConfigError {
    /// The names of the bad variables, in the order they are printed (one
    /// name may appear twice if it breaks two rules).
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.problems.iter().map(|problem| problem.variable)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration:")?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One bad variable.
#[derive(Debug)]
struct Problem {
    /// The variable's name, taken from the table.
    variable: &'static str,
    /// How much of the value the message may show.
    value: Shown,
    /// What was expected, lowercase, with a hint where one helps.
    reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.variable)?;
        match &self.value {
            // `{:?}` quotes and escapes: a value holding a newline cannot
            // forge an extra line of the message.
            Shown::Value(value) => write!(f, "={value:?}")?,
            Shown::Redacted => f.write_str("=<redacted>")?,
            Shown::NotUnicode => f.write_str("=<not UTF-8>")?,
            Shown::Nothing => {}
        }
        write!(f, ": {}", self.reason)
    }
}

/// How a [`Problem`] shows the offending value.
#[derive(Debug)]
enum Shown {
    /// The trimmed value, cut to [`MAX_SHOWN_CHARS`]: not a secret.
    Value(String),
    /// A secret: the message names the variable only.
    Redacted,
    /// Not UTF-8 (only [`Config::from_env`] can see such a value).
    NotUnicode,
    /// A missing variable, or a rule about several variables.
    Nothing,
}

/// Longest value a message repeats: enough to recognise it, short enough
/// that a pasted blob does not bury the other problems.
const MAX_SHOWN_CHARS: usize = 80;

impl Shown {
    /// The value, cut to [`MAX_SHOWN_CHARS`].
    fn value(text: &str) -> Shown {
        if text.chars().count() <= MAX_SHOWN_CHARS {
            Shown::Value(text.to_owned())
        } else {
            let mut cut: String = text.chars().take(MAX_SHOWN_CHARS).collect();
            cut.push_str("...");
            Shown::Value(cut)
        }
    }
}

/// A value as read from the environment.
#[derive(Debug)]
enum Raw {
    /// UTF-8 text, not yet trimmed.
    Text(String),
    /// Bytes that are not UTF-8.
    NotUnicode,
}

/// Applies the given values over the defaults, then the rules that involve
/// several variables.
fn build(mut given: HashMap<&'static str, Raw>) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    let mut problems = Vec::new();
    // Walk the table, not the input, so problems come out in help order.
    for var in all_vars() {
        let Some(raw) = given.remove(var.name) else { continue };
        let text = match &raw {
            Raw::Text(text) => text.trim(),
            Raw::NotUnicode => {
                problems.push(Problem {
                    variable: var.name,
                    value: Shown::NotUnicode,
                    reason: "expected UTF-8 text".to_owned(),
                });
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        if let Err(reason) = (var.apply)(&mut config, text) {
            let value = if var.secret { Shown::Redacted } else { Shown::value(text) };
            problems.push(Problem { variable: var.name, value, reason });
        }
    }
    check_combinations(&config, &mut problems);
    if problems.is_empty() { Ok(config) } else { Err(ConfigError { problems }) }
}

/// Rules about several variables at once.
///
/// A rule is skipped when one of its inputs is already reported as bad: that
/// input still holds its default, and judging the default would add a
/// confusing second message about a value the operator never wrote.
fn check_combinations(config: &Config, problems: &mut Vec<Problem>) {
    let failed: Vec<&str> = problems.iter().map(|problem| problem.variable).collect();
    let sound = |names: &[&str]| names.iter().all(|name| !failed.contains(name));

    if config.auth_mode == AuthMode::Tokens
        && config.tokens_file.is_none()
        && sound(&["LIVE_AUTH_MODE", "LIVE_TOKENS_FILE"])
    {
        problems.push(Problem {
            variable: "LIVE_TOKENS_FILE",
            value: Shown::Nothing,
            reason: "required when LIVE_AUTH_MODE=tokens: set it to the path of the JSON \
                     token file"
                .to_owned(),
        });
    }
    if config.auth_mode == AuthMode::Directus
        && config.directus_base_url.is_none()
        && sound(&["LIVE_AUTH_MODE", "DIRECTUS_BASE_URL"])
    {
        problems.push(Problem {
            variable: "DIRECTUS_BASE_URL",
            value: Shown::Nothing,
            reason: "required when LIVE_AUTH_MODE=directus: set it to the Directus URL, e.g. \
                     https://directus.example.com"
                .to_owned(),
        });
    }
    // SPEC §5: mode `none` lets anyone subscribe to anything, which is only
    // acceptable when nobody but this host can connect, or when the operator
    // says so explicitly.
    if config.auth_mode == AuthMode::None
        && !config.auth_allow_insecure
        && config.ws_exposed()
        && sound(&["LIVE_AUTH_MODE", "LIVE_WS_HOST", "LIVE_AUTH_ALLOW_INSECURE"])
        && sound(&["LIVE_TRUSTED_PROXIES"])
    {
        problems.push(Problem {
            variable: "LIVE_AUTH_MODE",
            value: Shown::Nothing,
            reason: format!(
                "mode none (the default) lets anyone subscribe to any event, but {}; set \
                 LIVE_AUTH_MODE=tokens or directus, or LIVE_AUTH_ALLOW_INSECURE=1 to accept \
                 anonymous access from the network",
                exposure(config.ws_host, "LIVE_WS_HOST")
            ),
        });
    }
    // SPEC §9: an ingest port reachable from the network must not take
    // positions from anyone unless the operator says so.
    if config.http_exposed()
        && config.ingest_token.is_none()
        && !config.ingest_allow_anonymous
        && sound(&["HTTP_HOST", "INGEST_TOKEN", "INGEST_ALLOW_ANONYMOUS"])
        && sound(&["LIVE_TRUSTED_PROXIES"])
    {
        problems.push(Problem {
            variable: "INGEST_TOKEN",
            value: Shown::Nothing,
            reason: format!(
                "{}, so anyone who reaches it could post positions into any event; set \
                 INGEST_TOKEN (trackers then send Authorization: Bearer <token>), or \
                 INGEST_ALLOW_ANONYMOUS=1 to accept positions from anyone",
                exposure(config.http_host, "HTTP_HOST")
            ),
        });
    }
    // TLS needs both files: one alone is a mistake, not "plain".
    for (given, set, other, missing) in [
        (
            "TLS_CERT_FILE",
            config.tls_cert_file.is_some(),
            "TLS_KEY_FILE",
            config.tls_key_file.is_none(),
        ),
        (
            "TLS_KEY_FILE",
            config.tls_key_file.is_some(),
            "TLS_CERT_FILE",
            config.tls_cert_file.is_none(),
        ),
    ] {
        if set && missing && sound(&["TLS_CERT_FILE", "TLS_KEY_FILE"]) {
            problems.push(Problem {
                variable: given,
                value: Shown::Nothing,
                reason: format!(
                    "set without {other}: TLS needs both the certificate chain and its private \
                     key (PEM files)"
                ),
            });
        }
    }
    // Caught here because SPEC §7 wants every bad value reported before any
    // port is bound, rather than as an "address in use" from the second bind.
    let overlap = config.ws_host == config.http_host
        || config.ws_host.is_unspecified()
        || config.http_host.is_unspecified();
    if config.http_port != 0
        && config.http_port == config.ws_port
        && overlap
        && sound(&["LIVE_WS_HOST", "LIVE_WS_PORT", "HTTP_HOST", "HTTP_PORT"])
    {
        problems.push(Problem {
            variable: "HTTP_PORT",
            value: Shown::value(&config.http_port.to_string()),
            reason: "same port and address as LIVE_WS_PORT; the HTTP and WebSocket listeners \
                     need different ports"
                .to_owned(),
        });
    }
}

impl Config {
    /// Whether the WebSocket port is reachable from the network (SPEC §9):
    /// bound off loopback, or behind a proxy (`LIVE_TRUSTED_PROXIES` set),
    /// which forwards the public's requests from a loopback peer. Every rule
    /// that depends on exposure asks this, never the bind address alone.
    pub fn ws_exposed(&self) -> bool {
        !self.ws_host.to_canonical().is_loopback() || !self.trusted_proxies.is_empty()
    }

    /// Whether the HTTP port is reachable from the network: as
    /// [`Config::ws_exposed`], for `HTTP_HOST`.
    pub fn http_exposed(&self) -> bool {
        !self.http_host.to_canonical().is_loopback() || !self.trusted_proxies.is_empty()
    }
}

/// Why a port counts as exposed, for a start refusal: its off-loopback
/// address (and the remedy of binding it to loopback), or the proxies in
/// front of it.
fn exposure(host: IpAddr, variable: &str) -> String {
    if host.to_canonical().is_loopback() {
        format!(
            "LIVE_TRUSTED_PROXIES is set: behind a reverse proxy the port is reachable from \
             the network, whatever {variable} is"
        )
    } else {
        format!("{variable}={host} is not a loopback address (or set {variable}=127.0.0.1)")
    }
}

// ---------------------------------------------------------------------------
// The table: one entry per variable.
// ---------------------------------------------------------------------------

/// Expands the table below into the [`Config`] struct (one documented field
/// per variable), `impl Default for Config` and [`GROUPS`], so that each
/// variable's name, type, default, parser, field doc and help line are
/// written once, in one entry:
///
/// ```text
/// /// Rustdoc of the field (its first line, naming the variable and the
/// /// default, is generated).
/// field: Type, "VARIABLE", [default], "Help line.", parser;
/// ```
///
/// `[default]` is `[Is "text"]` (the help shows `text`, and `Default`
/// parses `text` with the entry's own parser, so the two cannot differ),
/// `[Unset]` (`Default::default()`: `None`, empty), `[Secret]` (unset, and
/// the value is never shown), or `[Computed "how", expression]`. The parser
/// is a `fn(&str) -> Result<Type, String>`; an optional `then` closure runs
/// on the config after a value was stored. `derived` lists the fields that
/// no variable sets directly.
macro_rules! config_table {
    (
        $(
            group $title:literal $(intro $intro:literal)? {
                $(
                    $(#[doc = $doc:literal])*
                    $field:ident: $ty:ty, $var:literal, $default:tt, $help:literal,
                    $parse:expr $(, then $then:expr)?;
                )*
            }
        )*
        derived {
            $( $(#[doc = $ddoc:literal])* $dfield:ident: $dty:ty = $dvalue:expr; )*
        }
    ) => {
        /// The whole configuration. Each field names its variable and
        /// default; `livecast --help` gives the same defaults, as both come
        /// from one table.
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        pub struct Config {
            $($(
                #[doc = concat!("`", $var, "` ", default_doc!($default), ":")]
                $(#[doc = $doc])*
                pub $field: $ty,
            )*)*
            $(
                $(#[doc = $ddoc])*
                pub $dfield: $dty,
            )*
        }

        impl Default for Config {
            fn default() -> Config {
                Config {
                    $($( $field: default_value!($var, $default, $parse), )*)*
                    $( $dfield: $dvalue, )*
                }
            }
        }

        /// Every variable livecast reads, grouped as `livecast --help`
        /// prints them.
        const GROUPS: &[Group] = &[
            $(
                Group {
                    title: $title,
                    intro: intro_text!($($intro)?),
                    vars: &[
                        $(
                            Var {
                                name: $var,
                                default: help_default!($default),
                                meaning: $help,
                                secret: is_secret!($default),
                                apply: |config, value| {
                                    config.$field = ($parse)(value)?;
                                    $( ($then)(config); )?
                                    Ok(())
                                },
                            },
                        )*
                    ],
                },
            )*
        ];
    };
}

/// The default as a field's doc shows it.
macro_rules! default_doc {
    ([Is $text:literal]) => {
        concat!("(default `", $text, "`)")
    };
    ([Unset]) => {
        "(unset)"
    };
    ([Secret]) => {
        "(unset; a secret, never logged)"
    };
    ([Computed $how:literal, $value:expr]) => {
        concat!("(default: `", $how, "`)")
    };
}

/// The value `Config::default()` gives a field.
macro_rules! default_value {
    ($var:literal, [Is $text:literal], $parse:expr) => {
        documented_default($var, $text, ($parse)($text))
    };
    ($var:literal, [Unset], $parse:expr) => {
        Default::default()
    };
    ($var:literal, [Secret], $parse:expr) => {
        Default::default()
    };
    ($var:literal, [Computed $how:literal, $value:expr], $parse:expr) => {
        $value
    };
}

/// The default as `livecast --help` shows it.
macro_rules! help_default {
    ([Is $text:literal]) => {
        HelpDefault::Is($text)
    };
    ([Unset]) => {
        HelpDefault::Unset
    };
    ([Secret]) => {
        HelpDefault::Unset
    };
    ([Computed $how:literal, $value:expr]) => {
        HelpDefault::Computed($how)
    };
}

/// Whether the value must never be shown.
macro_rules! is_secret {
    ([Secret]) => {
        true
    };
    ($other:tt) => {
        false
    };
}

/// A group's optional introduction.
macro_rules! intro_text {
    () => {
        None
    };
    ($intro:literal) => {
        Some($intro)
    };
}

config_table! {
    group "WebSocket listener" {
        /// Address of the WebSocket listener.
        ws_host: IpAddr, "LIVE_WS_HOST", [Is "127.0.0.1"],
            "Address of the WebSocket listener: an IP address or localhost.",
            host;
        /// Port of the WebSocket listener; 0 picks a free port (tests).
        ws_port: u16, "LIVE_WS_PORT", [Is "8080"],
            "Port of the WebSocket listener; 0 picks a free port.",
            port;
        /// WebSocket connections, handshaking ones included; past it an
        /// upgrade gets 503.
        max_connections: usize, "LIVE_WS_MAX_CONNECTIONS", [Is "10000"],
            "Connections, handshaking ones included; past it an upgrade gets 503.",
            |v| count(v, 1);
        /// Connections per client IP, past it 503; 0 means unlimited.
        /// Peers in `LIVE_TRUSTED_PROXIES` are exempt (their clients count).
        max_connections_per_ip: usize, "LIVE_WS_MAX_CONNECTIONS_PER_IP", [Is "1000"],
            "Connections per client IP, past it 503; 0 means unlimited.",
            |v| count(v, 0);
        /// Connections per client IP still in the WebSocket handshake; past
        /// it 503 at once.
        max_pending_per_ip: usize, "LIVE_WS_MAX_PENDING_PER_IP", [Is "8"],
            "Connections per client IP still in the handshake; past it 503 at once.",
            |v| count(v, 1);
        /// A client that has not sent its whole upgrade request by then is
        /// dropped (slowloris).
        handshake_timeout: Duration, "LIVE_WS_HANDSHAKE_TIMEOUT_MS", [Is "5000"],
            "Time a client has to send its whole upgrade request (slowloris).",
            |v| millis(v, 1);
        /// Frame-level ping period; a peer silent for more than two of these
        /// is terminated.
        ping_interval: Duration, "LIVE_WS_PING_INTERVAL_MS", [Is "30000"],
            "Ping period; a peer silent for two periods is dropped.",
            |v| millis(v, 1);
        /// Sustained inbound frames per second past which a client is closed
        /// with 1008.
        max_inbound_per_sec: u32, "LIVE_WS_MAX_INBOUND_PER_SEC", [Is "20"],
            "Sustained inbound messages per second past which a client gets 1008.",
            |v| count(v, 1);
        /// Larger inbound frames close the connection with 1009.
        max_message_bytes: usize, "LIVE_WS_MAX_MESSAGE_BYTES", [Is "4096"],
            "Largest inbound frame; a larger one closes the connection with 1009.",
            |v| count(v, 1);
        /// Entries in a client's outbound queue.
        queue_capacity: usize, "LIVE_WS_QUEUE_CAPACITY", [Is "64"],
            "Entries in a client's outbound queue; when full the client gets 1008.",
            queue_capacity;
        /// Queued-unsent bytes past which a client is closed with 1008.
        backpressure_threshold_bytes: usize, "LIVE_WS_BACKPRESSURE_THRESHOLD_BYTES",
            [Is "1048576"],
            "Queued unsent bytes past which a client is closed with 1008.",
            |v| count(v, 1);
        /// Bytes owed to a client that make no progress for this long close
        /// it with 1008, whatever its heartbeat.
        write_timeout: Duration, "LIVE_WS_WRITE_TIMEOUT_MS", [Is "10000"],
            "Bytes owed to a client with no progress for this long: close 1008.",
            |v| millis(v, 1);
        /// Subscriptions per connection.
        max_subscriptions: usize, "LIVE_WS_MAX_SUBSCRIPTIONS", [Is "32"],
            "Subscriptions per connection.",
            |v| count(v, 1);
        /// How long a stop waits for clients to answer the 1001 close before
        /// terminating them.
        drain_timeout: Duration, "LIVE_WS_DRAIN_TIMEOUT_MS", [Is "5000"],
            "At stop, how long clients have to answer the 1001 close; 0 = none.",
            |v| millis(v, 0);
        /// The `retry-after-ms` values handed out at shutdown are spread
        /// evenly over this window.
        reconnect_spread: Duration, "LIVE_WS_RECONNECT_SPREAD_MS", [Is "10000"],
            "At stop, clients are told to come back spread over this window.",
            |v| millis(v, 0);
        /// Stack of connection threads; at least 65536, as a smaller stack
        /// overflows and aborts the process.
        thread_stack_bytes: usize, "LIVE_WS_THREAD_STACK_BYTES", [Is "262144"],
            "Stack of each connection thread; at least 65536.",
            thread_stack;
    }
    group "HTTP listener and ingest" {
        /// Address of the metrics/ingest listener.
        http_host: IpAddr, "HTTP_HOST", [Is "127.0.0.1"],
            "Address of the metrics/health/ingest/dashboard listener.",
            host;
        /// Port of the metrics/ingest listener; 0 picks a free port (tests).
        http_port: u16, "HTTP_PORT", [Is "9090"],
            "Port of that listener; 0 picks a free port.",
            port;
        /// Larger ingest bodies get 413.
        ingest_max_body_bytes: usize, "INGEST_MAX_BODY_BYTES", [Is "8388608"],
            "Largest POST /ingest body; a larger one gets 413.",
            |v| count(v, 1);
        /// Positions in one ingest body; more get 413.
        ingest_max_items: usize, "INGEST_MAX_ITEMS", [Is "10000"],
            "Most positions in one POST /ingest body; more get 413.",
            |v| count(v, 1);
        /// Bearer token required by `POST /ingest`.
        ingest_token: Option<Secret>, "INGEST_TOKEN", [Secret],
            "When set, POST /ingest requires Authorization: Bearer <token>.",
            secret;
        /// Allow `POST /ingest` without `INGEST_TOKEN` on a non-loopback
        /// `HTTP_HOST`.
        ingest_allow_anonymous: bool, "INGEST_ALLOW_ANONYMOUS", [Is "0"],
            "1 allows POST /ingest without INGEST_TOKEN on a non-loopback HTTP_HOST.",
            boolean;
        /// Bearer token required by `GET /debug/*`; when unset, `/debug/*`
        /// is refused off loopback.
        debug_token: Option<Secret>, "DEBUG_TOKEN", [Secret],
            "Bearer token for GET /debug/*; unset: /debug/* is refused off loopback.",
            secret;
        /// HTTP connections at once; when full, the longest-idle kept-alive
        /// connection is closed to make room, else 503.
        http_max_connections: usize, "HTTP_MAX_CONNECTIONS", [Is "256"],
            "HTTP connections at once; when full, the longest-idle one is closed.",
            |v| count(v, 1);
        /// HTTP connections per client IP (IPv6 by /64); past it 503.
        http_max_connections_per_ip: usize, "HTTP_MAX_CONNECTIONS_PER_IP", [Is "32"],
            "HTTP connections per client IP (IPv6: per /64); past it 503.",
            |v| count(v, 1);
        /// Time a client has to send a whole request head on the HTTP port.
        http_head_timeout: Duration, "HTTP_HEAD_TIMEOUT_MS", [Is "10000"],
            "Time an HTTP client has to send a whole request head.",
            |v| millis(v, 1);
        /// Time a whole HTTP response has to be written, however the client
        /// reads it; past it the connection is closed.
        http_write_timeout: Duration, "HTTP_WRITE_TIMEOUT_MS", [Is "30000"],
            "Time to write a whole HTTP response; past it the connection is closed.",
            |v| millis(v, 1);
        /// Comma list of addresses or CIDRs of reverse proxies whose
        /// `X-Forwarded-For` names the client.
        trusted_proxies: TrustedProxies, "LIVE_TRUSTED_PROXIES", [Unset],
            "Proxies (addresses/CIDRs) whose X-Forwarded-For names the client.",
            TrustedProxies::parse;
        /// Comma list of the names (`Host` header, any port) both ports
        /// answer; other names get 421. Unset: on a loopback listener only
        /// loopback addresses and `localhost`, elsewhere any name.
        public_hosts: Vec<String>, "LIVE_PUBLIC_HOSTS", [Unset],
            "Host names both ports answer (others get 421); set it behind a proxy.",
            public_hosts;
    }
    group "TLS (both ports; reloaded on SIGHUP and when either file changes)" {
        /// PEM certificate chain, the server's certificate first; with
        /// `TLS_KEY_FILE`, both ports speak TLS 1.2/1.3.
        tls_cert_file: Option<PathBuf>, "TLS_CERT_FILE", [Unset],
            "PEM certificate chain; with TLS_KEY_FILE, wss:// and https://.",
            path;
        /// PEM private key of that certificate (PKCS#8, RSA or EC).
        tls_key_file: Option<PathBuf>, "TLS_KEY_FILE", [Unset],
            "PEM private key of TLS_CERT_FILE's certificate (PKCS#8, RSA or EC).",
            path;
        /// Whether the HTTP port speaks TLS too when a pair is given.
        http_tls: bool, "HTTP_TLS", [Is "on"],
            "off keeps the HTTP port plain when TLS is on (e.g. a local Prometheus).",
            on_off;
    }
    group "Authentication" {
        /// How upgrades are authenticated and subscribes authorized.
        auth_mode: AuthMode, "LIVE_AUTH_MODE", [Is "none"],
            "none (anonymous), tokens (LIVE_TOKENS_FILE) or directus.",
            auth_mode;
        /// Allow mode `none` on a non-loopback `LIVE_WS_HOST`.
        auth_allow_insecure: bool, "LIVE_AUTH_ALLOW_INSECURE", [Is "0"],
            "1 allows mode none on a non-loopback LIVE_WS_HOST.",
            boolean;
        /// The JSON token file; required in mode `tokens`.
        tokens_file: Option<PathBuf>, "LIVE_TOKENS_FILE", [Unset],
            "JSON {\"<token>\":{\"user\":..,\"events\":[..]}}; required in mode tokens.",
            path;
        /// Comma list of allowed `Origin`s, each `scheme://host[:port]`,
        /// stored lowercased as browsers send them.
        allowed_origins: Vec<String>, "LIVE_WS_ALLOWED_ORIGINS", [Unset],
            "Comma list of scheme://host[:port]; other Origins get 403.",
            origins;
    }
    group "Redis source" {
        /// Redis Stream source.
        redis_url: Option<Secret>, "REDIS_URL", [Secret],
            "Position stream: redis://, rediss:// or unix:// URL; unset = no Redis.",
            redis_url;
        /// The stream holding the positions.
        stream_key: String, "LIVE_STREAM_KEY", [Is "positions"],
            "Stream holding the positions (field data).",
            text;
        /// Consumer group name prefix.
        group_prefix: String, "LIVE_BROADCAST_GROUP_PREFIX", [Is "livecast:"],
            "Consumer group name prefix; the group is prefix + INSTANCE_ID.",
            text;
        /// Names this instance's consumer group.
        instance_id: String, "INSTANCE_ID",
            [Computed "hostname-<8 random hex digits>", default_instance_id()],
            "Names this instance's consumer group; a random one's is deleted at stop.",
            text, then |config: &mut Config| config.instance_id_configured = true;
        /// `XREADGROUP COUNT`.
        batch_size: usize, "LIVE_BROADCAST_BATCH_SIZE", [Is "500"],
            "XREADGROUP COUNT: positions read per batch.",
            |v| count(v, 1);
        /// `XREADGROUP BLOCK`.
        batch_block: Duration, "LIVE_BROADCAST_BATCH_BLOCK_MS", [Is "1000"],
            "XREADGROUP BLOCK: longest wait for new positions (0 would block forever).",
            |v| millis(v, 1);
        /// Entries read from the stream's tail at start, so snapshots are
        /// right after a restart; 0 skips it.
        warm_count: usize, "LIVE_STREAM_WARM_COUNT", [Is "10000"],
            "Stream entries read from the tail at start to warm snapshots (0: none).",
            |v| count(v, 0);
        /// `XADD MAXLEN ~` for ingest, so that the stream does not grow
        /// until Redis runs out of memory; 0 means unlimited.
        stream_maxlen: usize, "LIVE_STREAM_MAXLEN", [Is "1000000"],
            "XADD MAXLEN ~ for ingested positions (0: the stream is not trimmed).",
            |v| count(v, 0);
    }
    group "Directus (LIVE_AUTH_MODE=directus)" {
        /// Required in mode `directus`.
        directus_base_url: Option<String>, "DIRECTUS_BASE_URL", [Unset],
            "http:// or https:// URL of Directus; required in mode directus.",
            http_url;
        /// Timeout of `GET /users/me` at upgrade.
        directus_auth_timeout: Duration, "DIRECTUS_AUTH_TIMEOUT_MS", [Is "3000"],
            "Timeout of GET /users/me at upgrade; on expiry the upgrade gets 503.",
            |v| millis(v, 1);
        /// Timeout of the event check at subscribe.
        directus_authz_timeout: Duration, "DIRECTUS_AUTHZ_TIMEOUT_MS", [Is "3000"],
            "Timeout of the event check at subscribe (error authz-unavailable).",
            |v| millis(v, 1);
        /// Collection whose items are the events a user may subscribe to.
        directus_events_collection: String, "DIRECTUS_EVENTS_COLLECTION", [Is "events"],
            "Collection whose items are the events a user may subscribe to.",
            collection;
        /// How long auth decisions are cached (denials at most 5 s); 0 keeps
        /// none (every check asks Directus: strict, though checks of one
        /// credential made at the same moment still share one request).
        auth_cache_ttl: Duration, "LIVE_AUTH_CACHE_TTL_MS", [Is "30000"],
            "How long auth decisions are cached; 0 disables the cache.",
            |v| millis(v, 0);
        /// How often each open connection checks its credential again (modes
        /// `tokens` and `directus`); one that no longer validates is closed
        /// with 4401.
        auth_revalidate: Duration, "LIVE_AUTH_REVALIDATE_MS", [Is "300000"],
            "How often open sessions are re-checked; an invalid one gets 4401.",
            |v| millis(v, 1);
    }
    group "Device->event map (for positions without eventId)" {
        /// JSON `{"device":"event"}` map.
        device_event_file: Option<PathBuf>, "LIVE_DEVICE_EVENT_FILE", [Unset],
            "JSON file {\"<deviceId>\":\"<eventId>\"}.",
            path;
        /// How often the map is reloaded.
        device_event_refresh: Duration, "LIVE_DEVICE_EVENT_REFRESH_MS", [Is "30000"],
            "How often the map is reloaded; a failed reload keeps the old map.",
            |v| millis(v, 1);
        /// Directus collection with fields `id` and `event`.
        directus_devices_collection: String, "DIRECTUS_DEVICES_COLLECTION", [Is "devices"],
            "Directus collection with fields id and event, read for the map.",
            collection;
        /// Static token for the device→event map.
        directus_token: Option<Secret>, "DIRECTUS_TOKEN", [Secret],
            "Static Directus token; in mode directus, loads the map from Directus.",
            secret;
    }
    group "Positions and fan-out" {
        /// Larger positions are rejected.
        max_position_bytes: usize, "LIVE_MAX_POSITION_BYTES", [Is "16384"],
            "Largest position (its JSON); a larger one is rejected.",
            |v| count(v, 64);
        /// Devices in the latest-position cache; past it the stalest is
        /// evicted.
        cache_max_devices: usize, "LIVE_CACHE_MAX_DEVICES", [Is "100000"],
            "Devices kept for snapshots; past it the stalest device is evicted.",
            |v| count(v, 1);
        /// Bytes of positions (latest and trails) in the cache; past it the
        /// stalest device is evicted, as past the device cap.
        cache_max_bytes: usize, "LIVE_CACHE_MAX_BYTES", [Is "268435456"],
            "Bytes of positions kept for snapshots; past it the stalest is evicted.",
            |v| count(v, 1_048_576);
        /// Longest an event's positions may wait for their flush, once its
        /// fan-out is costly.
        broadcast_max_delay: Duration, "LIVE_BROADCAST_MAX_DELAY_MS", [Is "20"],
            "Longest wait of an event's positions for their flush (costly fan-outs).",
            |v| millis(v, 0);
        /// Recent positions kept per device for the `trail` of a subscribe;
        /// 0 turns trails off.
        trail_length: usize, "LIVE_TRAIL_LENGTH", [Is "30"],
            "Recent positions kept per device for trails; 0 turns trails off.",
            trail_length;
    }
    group "Logging" {
        /// Most verbose level logged.
        log_level: log::LevelFilter, "LOG_LEVEL", [Is "info"],
            "Most verbose level logged: off, error, warn, info, debug or trace.",
            log_level;
        /// Log line format.
        log_format: LogFormat, "LOG_FORMAT", [Is "text"],
            "text, or json for one JSON object per line.",
            log_format;
    }
    group "Demo (livecast --demo)"
        intro "Starts the server and a simulator that moves devices in three events\n\
               (demo-marathon, demo-regatta, demo-rally) and posts their positions to\n\
               this server's POST /ingest over HTTP, then prints the dashboard URL."
    {
        /// Simulated devices in all (`livecast --demo` only).
        demo_devices: usize, "LIVE_DEMO_DEVICES", [Is "12"],
            "Simulated devices in all, dealt in turn to the three events (1-1000).",
            |v| within(v, 1, 1000);
        /// Time between two reports of every simulated device (only with
        /// `livecast --demo`).
        demo_interval: Duration, "LIVE_DEMO_INTERVAL_MS", [Is "1000"],
            "Time between two reports of every device (100-60000).",
            |v| within(v, 100, 60_000).map(Duration::from_millis);
    }
    derived {
        /// Whether `INSTANCE_ID` was set (a random one's group is destroyed
        /// on graceful shutdown).
        instance_id_configured: bool = false;
    }
}

// ---------------------------------------------------------------------------
// The types the table expands into.
// ---------------------------------------------------------------------------

/// A heading of `livecast --help` and its variables.
#[derive(Debug)]
struct Group {
    /// The heading.
    title: &'static str,
    /// Lines printed under the heading, before the variables.
    intro: Option<&'static str>,
    /// The variables under it, in help order.
    vars: &'static [Var],
}

/// One environment variable, as its table entry made it: its name,
/// default, meaning and how to parse it.
#[derive(Debug)]
struct Var {
    /// Exact name, case-sensitive as the environment is.
    name: &'static str,
    /// The default, as help shows it. `Config::default()` parses the `Is`
    /// values with `apply`'s parser, so they cannot differ.
    default: HelpDefault,
    /// One line for help: what it does and when to change it.
    meaning: &'static str,
    /// Whether the value must never appear in messages.
    secret: bool,
    /// Parses a trimmed, non-empty value into its field; the error says what
    /// was expected and must not repeat the value (the caller shows it when
    /// the variable is not secret).
    apply: Apply,
}

/// Parses a trimmed, non-empty value into its field of the config.
type Apply = fn(&mut Config, &str) -> Result<(), String>;

/// A default as help shows it.
#[derive(Debug, Clone, Copy)]
enum HelpDefault {
    /// This exact value, which parses to the field's `Default`.
    Is(&'static str),
    /// The field is `None` or empty unless the variable is set.
    Unset,
    /// Computed at start; the text says how.
    Computed(&'static str),
}

/// Every variable of the table, in help order.
fn all_vars() -> impl Iterator<Item = &'static Var> {
    GROUPS.iter().flat_map(|group| group.vars)
}

/// The table's entry for `name`, if it is one of ours.
fn find_var(name: &str) -> Option<&'static Var> {
    all_vars().find(|var| var.name == name)
}

// ---------------------------------------------------------------------------
// Value parsers. Each gets a trimmed, non-empty value and, on error, says
// what was expected without repeating the value (secrets go through these).
// ---------------------------------------------------------------------------

/// A default of the table, parsed by its own parser.
///
/// # Panics
/// When the table's default text does not parse: a mistake in the table,
/// never in input, caught by every test that builds a `Config` (and by
/// `every_documented_default_parses`), before any release.
#[allow(clippy::panic)] // The defaults are literals of the table, see above.
fn documented_default<T>(name: &str, text: &str, parsed: Result<T, String>) -> T {
    match parsed {
        Ok(value) => value,
        Err(reason) => panic!("the table's default {name}={text} does not parse: {reason}"),
    }
}

/// Text, as given (already trimmed and non-empty).
#[allow(clippy::unnecessary_wraps)] // The table wants every parser fallible.
fn text(value: &str) -> Result<String, String> {
    Ok(value.to_owned())
}

/// A path, as given; its owner reads the file at start.
#[allow(clippy::unnecessary_wraps)] // The table wants every parser fallible.
fn path(value: &str) -> Result<Option<PathBuf>, String> {
    Ok(Some(PathBuf::from(value)))
}

/// A secret, as given.
#[allow(clippy::unnecessary_wraps)] // The table wants every parser fallible.
fn secret(value: &str) -> Result<Option<Secret>, String> {
    Ok(Some(Secret::new(value)))
}

/// An IP address (v6 with or without brackets) or `localhost`.
///
/// `localhost` means 127.0.0.1 rather than whatever the resolver says: binding
/// must not depend on `/etc/hosts`, and the loopback rule of mode `none` must
/// be decidable here.
fn host(value: &str) -> Result<IpAddr, String> {
    if value.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let bare = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(value);
    bare.parse()
        .map_err(|_| "expected an IP address (such as 0.0.0.0 or ::) or localhost".to_owned())
}

/// A TCP port; 0 asks the kernel for a free one.
fn port(value: &str) -> Result<u16, String> {
    value.parse().map_err(|_| "expected a port number 0-65535".to_owned())
}

/// A whole number of at least `min`, in the field's integer type.
fn count<T: TryFrom<u64>>(value: &str, min: u64) -> Result<T, String> {
    let n = whole(value)?;
    if n < min {
        return Err(format!("must be at least {min}"));
    }
    T::try_from(n).map_err(|_| "number too large".to_owned())
}

/// A whole number from `min` to `max`, in the field's integer type.
fn within<T: TryFrom<u64>>(value: &str, min: u64, max: u64) -> Result<T, String> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => {
            T::try_from(n).map_err(|_| "number too large".to_owned())
        }
        _ => Err(format!("expected a whole number {min}-{max}")),
    }
}

/// Largest `LIVE_WS_QUEUE_CAPACITY`: crossbeam's bounded channel allocates
/// all its slots up front, per connection, so a typo like 64000000 would cost
/// gigabytes per client and abort the process at the first connection.
const MAX_QUEUE_CAPACITY: usize = 65_536;

/// `LIVE_WS_QUEUE_CAPACITY`: 1 to [`MAX_QUEUE_CAPACITY`].
fn queue_capacity(value: &str) -> Result<usize, String> {
    let n: usize = count(value, 1)?;
    if n > MAX_QUEUE_CAPACITY {
        return Err(format!(
            "must be at most {MAX_QUEUE_CAPACITY}: every connection allocates its whole queue \
             up front"
        ));
    }
    Ok(n)
}

/// Smallest `LIVE_WS_THREAD_STACK_BYTES`. Below it a connection thread can
/// overflow its stack in the handshake or in serde_json, and a stack overflow
/// aborts the whole process (the guard page kills it), not just that client.
const MIN_THREAD_STACK_BYTES: u64 = 65_536;

/// `LIVE_WS_THREAD_STACK_BYTES`: at least [`MIN_THREAD_STACK_BYTES`].
fn thread_stack(value: &str) -> Result<usize, String> {
    let n = whole(value)?;
    if n < MIN_THREAD_STACK_BYTES {
        return Err(format!(
            "must be at least {MIN_THREAD_STACK_BYTES}: smaller stacks overflow, and a stack \
             overflow aborts the whole server"
        ));
    }
    usize::try_from(n).map_err(|_| "number too large".to_owned())
}

/// Longest accepted `*_MS` value: 30 days. Other modules compute deadlines as
/// `Instant::now() + duration`, which panics on overflow; a bound keeps every
/// such sum far from it, and no timeout here is sensibly longer.
const MAX_MILLIS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Whole milliseconds, at least `min` (0 or 1), at most [`MAX_MILLIS`].
fn millis(value: &str, min: u64) -> Result<Duration, String> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a whole number of milliseconds".to_owned());
    }
    // All digits: parsing can only overflow, and an overflow is too large.
    let ms = value.parse().unwrap_or(u64::MAX);
    if ms < min {
        return Err(format!("must be at least {min} ms"));
    }
    if ms > MAX_MILLIS {
        return Err(format!("must be at most {MAX_MILLIS} ms (30 days)"));
    }
    Ok(Duration::from_millis(ms))
}

/// A non-negative whole number in decimal digits (no sign, no `_`).
fn whole(value: &str) -> Result<u64, String> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a non-negative whole number".to_owned());
    }
    value.parse().map_err(|_| "number too large".to_owned())
}

/// Largest `LIVE_TRAIL_LENGTH`: every device keeps that many frames.
const MAX_TRAIL_LENGTH: usize = 1000;

/// `LIVE_TRAIL_LENGTH`: 0 to [`MAX_TRAIL_LENGTH`].
fn trail_length(value: &str) -> Result<usize, String> {
    let n: usize = count(value, 0)?;
    if n > MAX_TRAIL_LENGTH {
        return Err(format!(
            "must be at most {MAX_TRAIL_LENGTH}: every device keeps that many positions"
        ));
    }
    Ok(n)
}

/// `on/off`, or any [`boolean`] spelling.
fn on_off(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => boolean(value).map_err(|_| "expected on or off".to_owned()),
    }
}

/// `1/0`, `true/false`, `yes/no`, any case.
fn boolean(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err("expected 1/0, true/false or yes/no".to_owned()),
    }
}

/// `none`, `tokens` or `directus`, any case.
fn auth_mode(value: &str) -> Result<AuthMode, String> {
    match value.to_ascii_lowercase().as_str() {
        "none" => Ok(AuthMode::None),
        "tokens" => Ok(AuthMode::Tokens),
        "directus" => Ok(AuthMode::Directus),
        _ => Err("expected none, tokens or directus".to_owned()),
    }
}

/// A log level, any case.
fn log_level(value: &str) -> Result<log::LevelFilter, String> {
    match value.to_ascii_lowercase().as_str() {
        "off" => Ok(log::LevelFilter::Off),
        "error" => Ok(log::LevelFilter::Error),
        "warn" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        "trace" => Ok(log::LevelFilter::Trace),
        _ => Err("expected off, error, warn, info, debug or trace".to_owned()),
    }
}

/// `text` or `json`, any case.
fn log_format(value: &str) -> Result<LogFormat, String> {
    match value.to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".to_owned()),
    }
}

/// The Directus base URL, without trailing `/` so that callers can append
/// `/users/me` as is.
fn http_url(value: &str) -> Result<Option<String>, String> {
    let lower = value.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    match rest {
        None => Err("must start with http:// or https://".to_owned()),
        Some(rest) if rest.trim_end_matches('/').is_empty() => {
            Err("has no host after http:// or https://".to_owned())
        }
        Some(_) => Ok(Some(value.trim_end_matches('/').to_owned())),
    }
}

/// A Redis URL. Only the scheme is checked: the rest may hold a password, and
/// the Redis client reports its own errors at connect time.
fn redis_url(value: &str) -> Result<Option<Secret>, String> {
    let lower = value.to_ascii_lowercase();
    if ["redis://", "rediss://", "unix://"].iter().any(|scheme| lower.starts_with(scheme)) {
        Ok(Some(Secret::new(value)))
    } else {
        Err("must start with redis://, rediss:// or unix://".to_owned())
    }
}

/// A Directus collection name, which becomes a URL path segment
/// (`/items/<collection>/...`), so it may not hold characters that would
/// change the URL's structure.
fn collection(value: &str) -> Result<String, String> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control() || "/?#%".contains(c)) {
        return Err("a collection name may not contain spaces, /, ?, # or %".to_owned());
    }
    Ok(value.to_owned())
}

/// A comma list of origins: trimmed, empty entries dropped, each checked by
/// [`origin`], all bad entries named in one message.
fn origins(value: &str) -> Result<Vec<String>, String> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        match origin(entry) {
            Some(normalised) => good.push(normalised),
            None => bad.push(format!("{entry:?}")),
        }
    }
    if bad.is_empty() {
        Ok(good)
    } else {
        Err(format!(
            "expected scheme://host[:port] entries (no path, not even a trailing /), got {}",
            bad.join(", ")
        ))
    }
}

/// One origin as a browser sends it in `Origin` (RFC 6454 §6.2):
/// `scheme://host[:port]`, lowercased because browsers send scheme and host
/// in lowercase and the check elsewhere compares strings.
fn origin(entry: &str) -> Option<String> {
    let lower = entry.to_ascii_lowercase();
    let (scheme, authority) = lower.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let (host_ok, port) = match authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        Some(v6) => {
            let (address, after) = v6.split_once(']')?;
            let port = if after.is_empty() { None } else { Some(after.strip_prefix(':')?) };
            (address.parse::<std::net::Ipv6Addr>().is_ok(), port)
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            let ok = !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            (ok, port)
        }
    };
    let port_ok = port.is_none_or(|port| {
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
    });
    (scheme_ok && host_ok && port_ok).then_some(lower)
}

/// `LIVE_PUBLIC_HOSTS`: host names (DNS names, IPv4 addresses, IPv6 ones
/// with or without brackets), without scheme or port, stored lowercased and
/// without brackets as [`crate::proxy::HostRule`] compares them.
fn public_hosts(value: &str) -> Result<Vec<String>, String> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let lower = entry.to_ascii_lowercase();
        let bare = lower.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(&lower);
        // A fully qualified `name.` is `name`, as `Host` values are read.
        let bare = bare.strip_suffix('.').unwrap_or(bare);
        let name_ok = !bare.is_empty()
            && bare.len() <= 253
            && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if name_ok || bare.parse::<std::net::Ipv6Addr>().is_ok() {
            good.push(bare.to_owned());
        } else {
            bad.push(format!("{entry:?}"));
        }
    }
    if bad.is_empty() {
        Ok(good)
    } else {
        Err(format!(
            "expected host names without scheme or port (live.example.org, 192.0.2.7, \
             [2001:db8::7]), got {}",
            bad.join(", ")
        ))
    }
}

/// Hostname plus a random suffix, so that two instances on one host differ.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() { "livecast".to_owned() } else { host };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", suffix.get(..8).unwrap_or("0"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::HelpDefault::{Computed, Is, Unset};
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().copied())
    }

    fn rejected(vars: &[(&str, &str)]) -> ConfigError {
        match parse(vars) {
            Ok(config) => panic!("{vars:?} accepted: {config:?}"),
            Err(err) => err,
        }
    }

    fn names(err: &ConfigError) -> Vec<&str> {
        err.variables().collect()
    }

    /// `Debug` of a config with the random instance id blanked, to compare
    /// two configs (`Config` has no `PartialEq`).
    fn fingerprint(config: &Config) -> String {
        let mut config = config.clone();
        config.instance_id.clear();
        format!("{config:?}")
    }

    #[test]
    fn no_variables_give_the_defaults() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(fingerprint(&config), fingerprint(&Config::default()));
        assert_eq!(config.ws_host, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(config.ws_port, 8080);
        assert_eq!(config.http_port, 9090);
        assert_eq!(config.auth_mode, AuthMode::None);
        assert_eq!(config.ping_interval, Duration::from_secs(30));
        assert!(config.redis_url.is_none());
        assert!(config.allowed_origins.is_empty());
        assert!(!config.instance_id.is_empty());
        assert!(!config.instance_id_configured);
    }

    #[test]
    fn help_defaults_are_the_real_defaults() {
        let vars: Vec<(&str, &str)> = all_vars()
            .filter_map(|var| match var.default {
                Is(value) => Some((var.name, value)),
                Unset | Computed(_) => None,
            })
            .collect();
        let config = Config::from_vars(vars).expect("the documented defaults are valid");
        assert_eq!(fingerprint(&config), fingerprint(&Config::default()));
    }

    #[test]
    fn every_documented_default_parses() {
        // `Config::default()` parses each `Is` text with its own parser and
        // panics on a table mistake: this names the culprit instead.
        for var in all_vars() {
            if let Is(value) = var.default {
                let mut config = Config::default();
                assert_eq!((var.apply)(&mut config, value), Ok(()), "{}", var.name);
            }
        }
    }

    #[test]
    fn the_readme_table_shows_the_same_defaults() {
        // The README's table is the one copy of the defaults outside this
        // file: each of its rows must agree with the entry it names.
        let readme = include_str!("../README.md");
        let start = readme.find("\n## Configuration\n").expect("README section");
        let section = &readme[start + 1..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        let mut rows = 0;
        for line in section.lines().filter(|line| line.starts_with("| `")) {
            let cells: Vec<&str> = line.split(" | ").collect();
            let name = cells[0].trim_start_matches("| ").trim_matches('`');
            let var = find_var(name).unwrap_or_else(|| panic!("README names {name}"));
            let shown = cells[1];
            match var.default {
                Is(value) => assert_eq!(shown, format!("`{value}`"), "{name}"),
                Unset => assert_eq!(shown, "unset", "{name}"),
                Computed(_) => assert!(!shown.starts_with('`'), "{name}: {shown}"),
            }
            rows += 1;
        }
        assert!(rows > 40, "only {rows} rows found in the README's table");
    }

    #[test]
    fn table_names_are_unique_and_well_formed() {
        let table: BTreeSet<&str> = all_vars().map(|var| var.name).collect();
        assert_eq!(table.len(), all_vars().count(), "a name appears twice in the table");
        for name in table {
            assert!(name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{name}");
        }
    }

    #[test]
    fn every_variable_is_wired_to_its_field() {
        // An odd value either changes the config or is rejected under the
        // variable's own name: no row of the table is a dead end.
        for var in all_vars() {
            match Config::from_vars([(var.name, "zz-7")]) {
                Ok(config) => assert_ne!(
                    fingerprint(&config),
                    fingerprint(&Config::default()),
                    "{} changed nothing",
                    var.name
                ),
                Err(err) => assert_eq!(names(&err), [var.name]),
            }
        }
    }

    #[test]
    fn accepts_good_values() {
        let config = parse(&[
            ("LIVE_WS_HOST", "LocalHost"),
            ("HTTP_HOST", "[::1]"),
            ("LIVE_WS_PORT", "0"),
            ("HTTP_PORT", "0"),
            ("LIVE_WS_PING_INTERVAL_MS", " 1500 "),
            ("LIVE_WS_DRAIN_TIMEOUT_MS", "0"),
            ("LIVE_WS_RECONNECT_SPREAD_MS", "0"),
            ("LIVE_AUTH_CACHE_TTL_MS", "0"),
            ("LIVE_WS_MAX_CONNECTIONS_PER_IP", "0"),
            ("LIVE_WS_MAX_INBOUND_PER_SEC", "4294967295"),
            ("LIVE_WS_THREAD_STACK_BYTES", "65536"),
            ("LIVE_WS_QUEUE_CAPACITY", "65536"),
            ("LIVE_WS_ALLOWED_ORIGINS", " https://Dash.Example.com , ,http://localhost:8080,"),
            ("LIVE_AUTH_MODE", "Directus"),
            ("DIRECTUS_BASE_URL", "https://directus.example.com/"),
            ("DIRECTUS_TOKEN", "static-token"),
            ("REDIS_URL", "rediss://:pw@redis:6380/0"),
            ("INSTANCE_ID", "eu-1"),
            ("LIVE_TOKENS_FILE", "/etc/livecast/tokens.json"),
            ("LOG_LEVEL", "DEBUG"),
            ("LOG_FORMAT", "json"),
            ("LIVE_DEMO_DEVICES", "1000"),
            ("LIVE_DEMO_INTERVAL_MS", "100"),
        ])
        .expect("all valid");
        assert_eq!(config.demo_devices, 1000);
        assert_eq!(config.demo_interval, Duration::from_millis(100));
        assert_eq!(config.ws_host, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(config.http_host, "::1".parse::<IpAddr>().expect("literal"));
        assert_eq!((config.ws_port, config.http_port), (0, 0));
        assert_eq!(config.ping_interval, Duration::from_millis(1500));
        assert_eq!(config.drain_timeout, Duration::ZERO);
        assert_eq!(config.reconnect_spread, Duration::ZERO);
        assert_eq!(config.auth_cache_ttl, Duration::ZERO);
        assert_eq!(config.max_inbound_per_sec, u32::MAX);
        assert_eq!(config.thread_stack_bytes, 65_536);
        assert_eq!(config.allowed_origins, ["https://dash.example.com", "http://localhost:8080"]);
        assert_eq!(config.auth_mode, AuthMode::Directus);
        assert_eq!(config.directus_base_url.as_deref(), Some("https://directus.example.com"));
        assert_eq!(config.directus_token.as_ref().map(Secret::expose), Some("static-token"));
        assert_eq!(
            config.redis_url.as_ref().map(Secret::expose),
            Some("rediss://:pw@redis:6380/0")
        );
        assert_eq!(config.instance_id, "eu-1");
        assert!(config.instance_id_configured);
        assert_eq!(config.tokens_file, Some(PathBuf::from("/etc/livecast/tokens.json")));
        assert_eq!(config.log_level, log::LevelFilter::Debug);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn accepts_every_boolean_spelling() {
        for (value, expected) in [
            ("1", true),
            ("TRUE", true),
            ("yes", true),
            ("0", false),
            ("False", false),
            ("NO", false),
        ] {
            let config = parse(&[("LIVE_AUTH_ALLOW_INSECURE", value)]).expect(value);
            assert_eq!(config.auth_allow_insecure, expected, "{value}");
        }
    }

    #[test]
    fn accepts_origin_shapes() {
        for good in ["https://a.example", "http://a.example:8080", "http://[::1]:9090", "app://x"] {
            assert!(origin(good).is_some(), "{good}");
        }
        for bad in [
            "a.example",
            "https://a.example/",
            "https://a.example/path",
            "https://a.example?x",
            "https://user@a.example",
            "https://a.example:",
            "https://a.example:99999",
            "https://",
            "https://[::1",
            "https://[nope]",
            "1http://a.example",
            "*",
        ] {
            assert!(origin(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn empty_and_unknown_variables_are_ignored() {
        let config = parse(&[
            ("LIVE_WS_PORT", ""),
            ("LIVE_STREAM_KEY", "   "),
            ("REDIS_URL", ""),
            ("LIVE_AUTH_MODE", ""),
            ("LIVE_WS_ALLOWED_ORIGINS", " , "),
            ("PATH", "/usr/bin"),
            ("live_ws_port", "not ours: names are case-sensitive"),
        ])
        .expect("nothing to reject");
        assert_eq!(fingerprint(&config), fingerprint(&Config::default()));
    }

    #[test]
    fn the_last_of_two_values_wins() {
        let config = parse(&[("LIVE_WS_PORT", "abc"), ("LIVE_WS_PORT", "81")]).expect("81");
        assert_eq!(config.ws_port, 81);
    }

    #[test]
    fn rejects_each_kind_of_bad_value() {
        let cases = [
            ("LIVE_WS_HOST", "ws.example.com", "expected an IP address"),
            ("HTTP_HOST", "300.1.1.1", "expected an IP address"),
            ("LIVE_WS_PORT", "abc", "expected a port number 0-65535"),
            ("HTTP_PORT", "65536", "expected a port number 0-65535"),
            ("LIVE_WS_PORT", "-1", "expected a port number 0-65535"),
            ("LIVE_WS_PING_INTERVAL_MS", "0", "must be at least 1 ms"),
            ("LIVE_WS_HANDSHAKE_TIMEOUT_MS", "0", "must be at least 1 ms"),
            ("LIVE_BROADCAST_BATCH_BLOCK_MS", "0", "must be at least 1 ms"),
            ("DIRECTUS_AUTH_TIMEOUT_MS", "0", "must be at least 1 ms"),
            ("DIRECTUS_AUTHZ_TIMEOUT_MS", "0", "must be at least 1 ms"),
            ("LIVE_AUTH_REVALIDATE_MS", "0", "must be at least 1 ms"),
            ("LIVE_DEVICE_EVENT_REFRESH_MS", "0", "must be at least 1 ms"),
            ("LIVE_WS_HANDSHAKE_TIMEOUT_MS", "5s", "expected a whole number of milliseconds"),
            ("LIVE_WS_DRAIN_TIMEOUT_MS", "-5", "expected a whole number of milliseconds"),
            ("LIVE_AUTH_CACHE_TTL_MS", "99999999999999999999999", "must be at most"),
            ("LIVE_WS_RECONNECT_SPREAD_MS", "2592000001", "must be at most"),
            ("LIVE_WS_MAX_CONNECTIONS", "0", "must be at least 1"),
            ("LIVE_WS_QUEUE_CAPACITY", "0", "must be at least 1"),
            ("LIVE_WS_QUEUE_CAPACITY", "64000000", "must be at most 65536"),
            ("LIVE_WS_MAX_SUBSCRIPTIONS", "0", "must be at least 1"),
            ("LIVE_BROADCAST_BATCH_SIZE", "0", "must be at least 1"),
            ("LIVE_WS_MAX_INBOUND_PER_SEC", "0", "must be at least 1"),
            ("LIVE_WS_MAX_INBOUND_PER_SEC", "4294967296", "number too large"),
            ("LIVE_WS_MAX_MESSAGE_BYTES", "0", "must be at least 1"),
            ("LIVE_WS_BACKPRESSURE_THRESHOLD_BYTES", "0", "must be at least 1"),
            ("INGEST_MAX_BODY_BYTES", "8 MiB", "expected a non-negative whole number"),
            ("LIVE_WS_MAX_CONNECTIONS_PER_IP", "-1", "expected a non-negative whole number"),
            ("LIVE_WS_THREAD_STACK_BYTES", "32768", "at least 65536: smaller stacks overflow"),
            ("LIVE_AUTH_ALLOW_INSECURE", "maybe", "expected 1/0, true/false or yes/no"),
            ("LIVE_AUTH_MODE", "oauth", "expected none, tokens or directus"),
            ("LIVE_WS_ALLOWED_ORIGINS", "https://a.example, b.example", "got \"b.example\""),
            ("LIVE_WS_ALLOWED_ORIGINS", "https://a.example/", "not even a trailing /"),
            ("DIRECTUS_BASE_URL", "directus:8055", "must start with http:// or https://"),
            ("DIRECTUS_BASE_URL", "https:///", "has no host"),
            ("REDIS_URL", "localhost:6379", "must start with redis://, rediss:// or unix://"),
            ("DIRECTUS_EVENTS_COLLECTION", "events/1", "may not contain"),
            ("DIRECTUS_DEVICES_COLLECTION", "my devices", "may not contain"),
            ("LOG_LEVEL", "verbose", "expected off, error, warn, info, debug or trace"),
            ("LOG_FORMAT", "xml", "expected text or json"),
            ("LIVE_DEMO_DEVICES", "0", "expected a whole number 1-1000"),
            ("LIVE_DEMO_DEVICES", "1001", "expected a whole number 1-1000"),
            ("LIVE_DEMO_INTERVAL_MS", "99", "expected a whole number 100-60000"),
            ("LIVE_DEMO_INTERVAL_MS", "1s", "expected a whole number 100-60000"),
        ];
        for (name, value, expected) in cases {
            let err = rejected(&[(name, value)]);
            assert_eq!(names(&err), [name], "{name}={value}");
            let message = err.to_string();
            assert!(message.contains(expected), "{name}={value}: {message}");
        }
    }

    #[test]
    fn reports_every_bad_variable_at_once() {
        let err = rejected(&[
            ("LOG_FORMAT", "xml"),
            ("LIVE_WS_PORT", "abc"),
            ("HTTP_PORT", "9091"),
            ("REDIS_URL", "nope"),
            ("LIVE_WS_QUEUE_CAPACITY", "0"),
        ]);
        // In help order, whatever the input order.
        assert_eq!(
            names(&err),
            ["LIVE_WS_PORT", "LIVE_WS_QUEUE_CAPACITY", "REDIS_URL", "LOG_FORMAT"]
        );
        assert_eq!(
            err.to_string(),
            "invalid configuration:\n  \
             LIVE_WS_PORT=\"abc\": expected a port number 0-65535\n  \
             LIVE_WS_QUEUE_CAPACITY=\"0\": must be at least 1\n  \
             REDIS_URL=<redacted>: must start with redis://, rediss:// or unix://\n  \
             LOG_FORMAT=\"xml\": expected text or json"
        );
    }

    #[test]
    fn secrets_are_never_shown() {
        let err = rejected(&[("REDIS_URL", "http://:hunter2@redis")]);
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("REDIS_URL"), "{text}");
        }
        assert!(err.to_string().contains("REDIS_URL=<redacted>: "));

        let config = parse(&[
            ("REDIS_URL", "redis://:hunter2@redis"),
            ("INGEST_TOKEN", "hunter3"),
            ("DIRECTUS_TOKEN", "hunter4"),
        ])
        .expect("valid");
        let debug = format!("{config:?}");
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(Config::help().contains("INGEST_TOKEN (unset) [secret: never logged]"));
    }

    #[test]
    fn values_that_are_not_utf8_are_named_not_shown() {
        let given = HashMap::from([
            ("INGEST_TOKEN", Raw::NotUnicode),
            ("LIVE_WS_PORT", Raw::NotUnicode),
            ("LOG_LEVEL", Raw::Text("debug".to_owned())),
        ]);
        let err = match build(given) {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(err) => err,
        };
        assert_eq!(names(&err), ["LIVE_WS_PORT", "INGEST_TOKEN"]);
        assert_eq!(
            err.to_string(),
            "invalid configuration:\n  \
             LIVE_WS_PORT=<not UTF-8>: expected UTF-8 text\n  \
             INGEST_TOKEN=<not UTF-8>: expected UTF-8 text"
        );
    }

    #[test]
    fn from_env_does_not_panic() {
        // The test runner's environment is whatever it is: only the absence
        // of a panic is checked (tests may not set variables: `set_var` is
        // unsafe and unsafe code is forbidden).
        let _ = Config::from_env();
    }

    #[test]
    fn shown_values_are_escaped_and_cut() {
        let err = rejected(&[("LIVE_WS_PORT", "1\n  LOG_LEVEL=\"x\": forged")]);
        assert_eq!(err.to_string().lines().count(), 2, "{err}");
        let long = "9".repeat(500);
        let err = rejected(&[("LIVE_WS_HOST", long.as_str())]);
        let expected = format!("LIVE_WS_HOST=\"{}...\": ", "9".repeat(MAX_SHOWN_CHARS));
        assert!(err.to_string().contains(&expected), "{err}");
    }

    #[test]
    fn mode_none_needs_loopback_or_explicit_consent() {
        for host in ["0.0.0.0", "::", "192.168.1.10"] {
            let err = rejected(&[("LIVE_WS_HOST", host)]);
            assert_eq!(names(&err), ["LIVE_AUTH_MODE"]);
            let message = err.to_string();
            for hint in
                ["LIVE_AUTH_MODE=tokens", "LIVE_WS_HOST=127.0.0.1", "LIVE_AUTH_ALLOW_INSECURE=1"]
            {
                assert!(message.contains(hint), "{message}");
            }
        }
        for host in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "localhost"] {
            assert!(parse(&[("LIVE_WS_HOST", host)]).is_ok(), "{host}");
        }
        let insecure = [("LIVE_WS_HOST", "0.0.0.0"), ("LIVE_AUTH_ALLOW_INSECURE", "yes")];
        assert!(parse(&insecure).is_ok());
        let tokens = [
            ("LIVE_WS_HOST", "0.0.0.0"),
            ("LIVE_AUTH_MODE", "tokens"),
            ("LIVE_TOKENS_FILE", "/etc/livecast/tokens.json"),
        ];
        assert!(parse(&tokens).is_ok());
        // The HTTP listener is not the WebSocket listener.
        assert!(parse(&[("HTTP_HOST", "0.0.0.0"), ("INGEST_ALLOW_ANONYMOUS", "1")]).is_ok());
    }

    #[test]
    fn ingest_off_loopback_needs_a_token_or_explicit_consent() {
        for host in ["0.0.0.0", "::", "192.168.1.10"] {
            let err = rejected(&[("HTTP_HOST", host)]);
            assert_eq!(names(&err), ["INGEST_TOKEN"]);
            let message = err.to_string();
            for hint in ["INGEST_TOKEN", "HTTP_HOST=127.0.0.1", "INGEST_ALLOW_ANONYMOUS=1"] {
                assert!(message.contains(hint), "{message}");
            }
            assert!(parse(&[("HTTP_HOST", host), ("INGEST_TOKEN", "s3cret")]).is_ok());
            assert!(parse(&[("HTTP_HOST", host), ("INGEST_ALLOW_ANONYMOUS", "1")]).is_ok());
        }
        for host in ["127.0.0.1", "::1", "localhost"] {
            assert!(parse(&[("HTTP_HOST", host)]).is_ok(), "{host}");
        }
    }

    #[test]
    fn behind_a_proxy_the_ports_count_as_exposed() {
        // SPEC §9: a loopback listener behind a trusted proxy serves the
        // public: the same rules as off loopback.
        let proxied = ("LIVE_TRUSTED_PROXIES", "127.0.0.1,::1");
        let err = rejected(&[proxied]);
        assert_eq!(names(&err), ["LIVE_AUTH_MODE", "INGEST_TOKEN"]);
        assert!(err.to_string().contains("LIVE_TRUSTED_PROXIES is set"), "{err}");
        let config =
            parse(&[proxied, ("LIVE_AUTH_ALLOW_INSECURE", "1"), ("INGEST_TOKEN", "s3cret")])
                .unwrap();
        assert!(config.ws_exposed() && config.http_exposed());
        assert!(
            parse(&[proxied, ("LIVE_AUTH_ALLOW_INSECURE", "1"), ("INGEST_ALLOW_ANONYMOUS", "1")])
                .is_ok()
        );
        let config = Config::default();
        assert!(!config.ws_exposed() && !config.http_exposed());
    }

    #[test]
    fn public_hosts_are_names_without_scheme_or_port() {
        let config =
            parse(&[("LIVE_PUBLIC_HOSTS", " Live.Example.org., 192.0.2.7,[2001:DB8::7], ::1 ,")])
                .unwrap();
        assert_eq!(config.public_hosts, ["live.example.org", "192.0.2.7", "2001:db8::7", "::1"]);
        for bad in ["https://live.example.org", "live.example.org:443", "a b", "x/y"] {
            assert_eq!(names(&rejected(&[("LIVE_PUBLIC_HOSTS", bad)])), ["LIVE_PUBLIC_HOSTS"]);
        }
    }

    #[test]
    fn tokens_mode_requires_its_file() {
        let err = rejected(&[("LIVE_AUTH_MODE", "tokens")]);
        assert_eq!(names(&err), ["LIVE_TOKENS_FILE"]);
        assert!(err.to_string().contains("LIVE_TOKENS_FILE: required when LIVE_AUTH_MODE=tokens"));
        let config = parse(&[("LIVE_AUTH_MODE", "tokens"), ("LIVE_TOKENS_FILE", "t.json")])
            .expect("file given");
        assert_eq!(config.auth_mode, AuthMode::Tokens);
    }

    #[test]
    fn directus_mode_requires_its_url() {
        let err = rejected(&[("LIVE_AUTH_MODE", "directus")]);
        assert_eq!(names(&err), ["DIRECTUS_BASE_URL"]);
        // A bad URL is reported once, not also as missing.
        let err = rejected(&[("LIVE_AUTH_MODE", "directus"), ("DIRECTUS_BASE_URL", "ftp://x")]);
        assert_eq!(names(&err), ["DIRECTUS_BASE_URL"]);
    }

    #[test]
    fn a_bad_input_does_not_trigger_rules_about_its_default() {
        // The bad mode keeps the default `none`; judging that against the
        // public host would be a second, confusing message.
        let err = rejected(&[("LIVE_AUTH_MODE", "oauth"), ("LIVE_WS_HOST", "0.0.0.0")]);
        assert_eq!(names(&err), ["LIVE_AUTH_MODE"]);
        assert!(err.to_string().contains("expected none, tokens or directus"));
        let err = rejected(&[("LIVE_WS_HOST", "0.0.0.0"), ("LIVE_AUTH_ALLOW_INSECURE", "si")]);
        assert_eq!(names(&err), ["LIVE_AUTH_ALLOW_INSECURE"]);
    }

    #[test]
    fn listeners_may_not_share_a_port() {
        let err = rejected(&[("HTTP_PORT", "8080")]);
        assert_eq!(names(&err), ["HTTP_PORT"]);
        let err = rejected(&[
            ("LIVE_WS_PORT", "9090"),
            ("HTTP_HOST", "0.0.0.0"),
            ("INGEST_ALLOW_ANONYMOUS", "1"),
        ]);
        assert_eq!(names(&err), ["HTTP_PORT"]);
        assert!(parse(&[("HTTP_PORT", "8080"), ("HTTP_HOST", "127.0.0.2")]).is_ok());
        assert!(parse(&[("LIVE_WS_PORT", "0"), ("HTTP_PORT", "0")]).is_ok());
    }

    #[test]
    fn help_lists_every_variable_with_its_default() {
        let help = Config::help();
        assert!(help.contains("Usage: livecast [--help | --version | --demo]"));
        assert!(help.contains("environment variables"));
        for group in GROUPS {
            assert!(help.contains(&format!("\n{}:\n", group.title)), "{}", group.title);
        }
        for var in all_vars() {
            let shown = match var.default {
                Is(value) => format!("\n  {}={value}", var.name),
                Unset => format!("\n  {} (unset)", var.name),
                Computed(how) => format!("\n  {} (default: {how})", var.name),
            };
            assert!(help.contains(&shown), "{shown}");
            assert!(help.contains(var.meaning), "{}", var.name);
        }
        for line in help.lines() {
            assert!(line.chars().count() <= 80, "help line over 80 columns: {line}");
        }
    }

    #[test]
    fn tls_needs_both_files_and_http_tls_is_on_or_off() {
        let both = parse(&[("TLS_CERT_FILE", "/c.pem"), ("TLS_KEY_FILE", "/k.pem")]).unwrap();
        assert_eq!(both.tls_cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(both.tls_key_file, Some(PathBuf::from("/k.pem")));
        assert!(both.http_tls, "the HTTP port follows by default");
        let err = rejected(&[("TLS_CERT_FILE", "/c.pem")]);
        assert_eq!(names(&err), ["TLS_CERT_FILE"]);
        assert!(err.to_string().contains("set without TLS_KEY_FILE"), "{err}");
        assert_eq!(names(&rejected(&[("TLS_KEY_FILE", "/k.pem")])), ["TLS_KEY_FILE"]);
        for (text, on) in
            [("off", false), ("OFF", false), ("0", false), ("on", true), ("yes", true)]
        {
            assert_eq!(parse(&[("HTTP_TLS", text)]).unwrap().http_tls, on, "{text}");
        }
        assert!(rejected(&[("HTTP_TLS", "maybe")]).to_string().contains("expected on or off"));
    }
}
