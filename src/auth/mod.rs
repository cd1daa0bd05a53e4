//! Authentication at the upgrade and authorization per subscribe (SPEC §5).
//!
//! - `none.rs`: everyone is `anonymous`;
//! - `tokens.rs`: bearer tokens from a JSON file, re-read when it changes;
//! - `directus.rs`: Directus's `/users/me` and item permissions, through
//!   [`crate::directus::Client`];
//! - `cache.rs`: the bounded decision cache with one lookup in flight per
//!   credential, which keeps a reconnect storm from becoming a Directus
//!   storm.
//!
//! Both calls run on the connection's own `ws-xxxxxxxx` thread and may
//! block (a file read, a network call): a slow authority stalls that client
//! only.

mod cache;
mod directus;
mod none;
mod tokens;

use std::fmt;
use std::time::Instant;

use crate::config::{AuthMode, Config, Secret};
use crate::directus::SESSION_COOKIE;
use crate::http_codec::RequestHead;
use crate::metrics::Metrics;

pub(crate) use none::NoAuth;
pub(crate) use tokens::TokenFile;

/// Credentials found in an upgrade (or `/auth/check`) request.
#[derive(Debug, Default, Clone)]
pub(crate) struct Credentials {
    /// `Authorization: Bearer <token>`.
    pub(crate) bearer: Option<Secret>,
    /// `?access_token=<token>`.
    pub(crate) query: Option<Secret>,
    /// The session cookie.
    pub(crate) cookie: Option<Secret>,
}

impl Credentials {
    pub(crate) fn from_head(head: &RequestHead) -> Credentials {
        let bearer = head.bearer().map(Secret::new);
        let query = head.query_param("access_token").filter(|t| !t.is_empty()).map(Secret::new);
        let cookie = head.header("cookie").and_then(|c| {
            c.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == SESSION_COOKIE && !v.is_empty()).then(|| Secret::new(v))
            })
        });
        Credentials { bearer, query, cookie }
    }

    /// The token given by header or query, header first.
    pub(crate) fn token(&self) -> Option<&Secret> {
        self.bearer.as_ref().or(self.query.as_ref())
    }

    /// Whether the credential in use is a cookie, which the browser attaches
    /// by itself and which therefore needs the Origin rule.
    pub(crate) fn uses_cookie(&self) -> bool {
        self.token().is_none() && self.cookie.is_some()
    }
}

/// Who a connection belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) user: String,
    /// The credential, kept to authorize subscribes later.
    pub(crate) credentials: Credentials,
}

/// Why an upgrade is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No credential, or one the authority does not know: 401.
    Denied,
    /// The authority could not be asked: 503 with `Retry-After`. The text
    /// is for the log and holds no credential.
    Unavailable(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Denied => f.write_str("auth: credentials missing or invalid"),
            AuthError::Unavailable(why) => write!(f, "auth: authority unavailable: {why}"),
        }
    }
}

/// Why a subscribe is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthzError {
    /// Not allowed, or no such event: `forbidden`.
    Forbidden,
    /// The authority timed out or failed: `authz-unavailable`.
    Unavailable,
}

/// How a decision was reached: the `outcome` label of
/// `livecast_auth_duration_seconds` and `livecast_authz_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The authority allowed.
    Ok,
    /// The authority refused.
    Denied,
    /// The authority did not answer in time.
    Timeout,
    /// The authority failed otherwise (refused connection, 5xx, garbage).
    Error,
    /// Answered from a cache (or a concurrent identical lookup) without
    /// asking the authority, whatever the answer.
    Cached,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Cached => "cached",
        }
    }
}

/// An authority deciding who may connect and subscribe.
pub(crate) trait Authenticator: Send + Sync + fmt::Debug {
    /// Checks the credentials of an upgrade. May block.
    fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthError>;
    /// Checks that `who` may subscribe to `event`. May block.
    fn authorize(&self, who: &Identity, event: &str) -> Result<(), AuthzError>;

    /// [`Authenticator::authenticate`] plus how the answer was reached, for
    /// the metrics. The default reads it off the result; an authority with
    /// a cache, or one that tells a timeout from other failures, says more.
    fn authenticate_traced(
        &self,
        credentials: &Credentials,
    ) -> (Result<Identity, AuthError>, Outcome) {
        let result = self.authenticate(credentials);
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(AuthError::Denied) => Outcome::Denied,
            Err(AuthError::Unavailable(_)) => Outcome::Error,
        };
        (result, outcome)
    }

    /// [`Authenticator::authorize`] plus how the answer was reached.
    fn authorize_traced(&self, who: &Identity, event: &str) -> (Result<(), AuthzError>, Outcome) {
        let result = self.authorize(who, event);
        let outcome = match result {
            Ok(()) => Outcome::Ok,
            Err(AuthzError::Forbidden) => Outcome::Denied,
            Err(AuthzError::Unavailable) => Outcome::Timeout,
        };
        (result, outcome)
    }
}

/// Builds the authenticator of `config.auth_mode`; `metrics` receives the
/// cache hits of the modes that cache.
///
/// # Errors
/// A description when the mode cannot start (tokens file unreadable).
pub(crate) fn from_config(
    config: &Config,
    metrics: &Metrics,
) -> Result<Box<dyn Authenticator>, String> {
    match config.auth_mode {
        AuthMode::None => Ok(Box::new(NoAuth)),
        AuthMode::Tokens => {
            let path = config.tokens_file.clone().ok_or("LIVE_TOKENS_FILE is not set")?;
            Ok(Box::new(TokenFile::open(path)?))
        }
        AuthMode::Directus => Ok(Box::new(directus::Directus::new(config, metrics.clone())?)),
    }
}

/// Authenticates and records the duration by outcome.
pub(crate) fn authenticate(
    auth: &dyn Authenticator,
    metrics: &Metrics,
    credentials: &Credentials,
) -> Result<Identity, AuthError> {
    let started = Instant::now();
    let (result, outcome) = auth.authenticate_traced(credentials);
    metrics
        .auth_duration
        .with_label_values(&[outcome.label()])
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Authorizes and records the duration by outcome.
pub(crate) fn authorize(
    auth: &dyn Authenticator,
    metrics: &Metrics,
    who: &Identity,
    event: &str,
) -> Result<(), AuthzError> {
    let started = Instant::now();
    let (result, outcome) = auth.authorize_traced(who, event);
    metrics
        .authz_duration
        .with_label_values(&[outcome.label()])
        .observe(started.elapsed().as_secs_f64());
    result
}

/// The Origin rule (SPEC §5), against cross-site WebSocket hijacking.
///
/// With an allow-list, an `Origin` outside it is refused. Without one, a
/// cookie credential needs an `Origin` whose hostname equals the `Host`
/// header's (ports may differ: cookies ignore ports). Requests without
/// `Origin` come from non-browser clients, which no cookie is forced on.
pub(crate) fn origin_allowed(
    allowed: &[String],
    origin: Option<&str>,
    host: Option<&str>,
    cookie: bool,
) -> bool {
    let Some(origin) = origin else { return true };
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a.eq_ignore_ascii_case(origin.trim_end_matches('/')));
    }
    if !cookie {
        return true;
    }
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    match host {
        Some(host) => hostname(origin_host).eq_ignore_ascii_case(hostname(host)),
        None => false,
    }
}

/// `host[:port]` or `[v6]:port` → host.
pub(crate) fn hostname(authority: &str) -> &str {
    let authority = authority.split('/').next().unwrap_or(authority);
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_rules() {
        let list = vec!["http://good.example".to_owned()];
        assert!(origin_allowed(&list, Some("http://good.example"), None, false));
        assert!(!origin_allowed(&list, Some("http://evil.example"), None, false));
        assert!(origin_allowed(&list, None, None, true));
        // No list: only cookie credentials are checked against Host.
        assert!(origin_allowed(&[], Some("http://evil.example"), Some("a:1"), false));
        assert!(origin_allowed(&[], Some("http://a:9090"), Some("a:8080"), true));
        assert!(!origin_allowed(&[], Some("http://evil:8080"), Some("a:8080"), true));
        assert!(origin_allowed(&[], Some("http://[::1]:9090"), Some("[::1]:8080"), true));
    }
}
