//! Mode `directus`: Directus decides who may connect and what they may
//! subscribe to (SPEC §5).
//!
//! - Authentication forwards the upgrade's credential to
//!   `GET /users/me?fields=id`: 200 gives the user id; 401 and 403 (Directus
//!   answers 403 `INVALID_TOKEN` for a JWT-shaped token with a bad
//!   signature) mean "not authenticated"; a timeout, a refused connection, a
//!   5xx or an answer we cannot read mean "cannot tell" (503 at the upgrade).
//! - Authorization asks `GET /items/<events>/<eventId>?fields=id` with the
//!   same credential: 200 allows; 401, 403 and 404 forbid (Directus answers
//!   403 both for an item the user may not read and for one that does not
//!   exist); anything else is `authz-unavailable`.
//!
//! Both run on the asking connection's own `ws-xxxxxxxx` thread, blocking
//! for at most `DIRECTUS_AUTH_TIMEOUT_MS` / `DIRECTUS_AUTHZ_TIMEOUT_MS`, so
//! a slow Directus stalls only the clients waiting on it. Decisions go through a
//! [`DecisionCache`] keyed by a keyed hash of the credential, so that a
//! reconnect storm with one session makes one request.
//!
//! The credential travels only in a request header (`Cookie:
//! directus_session_token=…` or `Authorization: Bearer …`, a query token
//! included, so that it never lands in Directus's access log), and is never
//! logged or kept as a cache key. The event id is percent-encoded as one
//! path segment, so nothing a client sends can change the path or the host.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{debug, info, warn};
use serde_json::Value;

use super::cache::{DecisionCache, Key, Served};
use super::{AuthError, Authenticator, AuthzError, Credentials, Identity, Outcome};
use crate::config::Config;
use crate::directus::{Client, Credential, Failure, encode_segment};
use crate::metrics::Metrics;

/// Answers larger than this are not what we asked for (`fields=id`).
const SMALL_ANSWER_BYTES: u64 = 64 * 1024;

/// Denials are cached at most this long, so that a user who just logged in
/// (or was just granted an event) is not refused for a whole TTL.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// A thread waiting on another's lookup of the same credential gives up
/// this long after that lookup's own timeout would have ended it.
const WAIT_MARGIN: Duration = Duration::from_secs(1);

/// Decisions kept per cache: a few hundred bytes each; beyond this the
/// oldest are dropped (and asked again when needed).
const AUTH_CACHE_ENTRIES: usize = 10_000;
const AUTHZ_CACHE_ENTRIES: usize = 50_000;

/// The upgrade's credential in Directus's form (the client lives in
/// [`crate::directus`], shared with the device map).
impl<'a> Credential<'a> {
    /// The credential of an upgrade: a header or query token first (as
    /// [`Credentials::token`] and the Origin rule have it), else the cookie.
    fn of(credentials: &'a Credentials) -> Option<Credential<'a>> {
        match (credentials.token(), &credentials.cookie) {
            (Some(token), _) => Some(Credential::Bearer(token.expose())),
            (None, Some(cookie)) => Some(Credential::Cookie(cookie.expose())),
            (None, None) => None,
        }
    }
}

/// What `/users/me` said, as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WhoAmI {
    User(String),
    Denied,
}

/// The `directus` authority.
pub(crate) struct Directus {
    client: Client,
    auth_timeout: Duration,
    authz_timeout: Duration,
    /// `/items/<encoded collection>/`.
    events_path: String,
    ttl: Duration,
    /// Two independently keyed SipHash states: a 128-bit cache key, that
    /// nobody without this process's random keys can aim a collision at.
    keys: (RandomState, RandomState),
    auth_cache: DecisionCache<Result<WhoAmI, Failure>>,
    authz_cache: DecisionCache<Result<bool, Failure>>,
    metrics: Metrics,
    /// Whether the last request failed: outages are logged once when they
    /// begin and once when they end, not once per connection.
    failing: AtomicBool,
}

impl fmt::Debug for Directus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directus")
            .field("events_path", &self.events_path)
            .field("ttl", &self.ttl)
            .field("auth_cache", &self.auth_cache)
            .field("authz_cache", &self.authz_cache)
            .finish_non_exhaustive()
    }
}

impl Directus {
    /// # Errors
    /// When `DIRECTUS_BASE_URL` is not set (the configuration check should
    /// have refused that already).
    pub(crate) fn new(config: &Config, metrics: Metrics) -> Result<Directus, String> {
        let base = config
            .directus_base_url
            .as_deref()
            .ok_or("DIRECTUS_BASE_URL is required when LIVE_AUTH_MODE=directus")?;
        Ok(Directus {
            client: Client::new(base),
            auth_timeout: config.directus_auth_timeout,
            authz_timeout: config.directus_authz_timeout,
            events_path: format!("/items/{}/", encode_segment(&config.directus_events_collection)),
            ttl: config.auth_cache_ttl,
            keys: (RandomState::new(), RandomState::new()),
            auth_cache: DecisionCache::new(AUTH_CACHE_ENTRIES),
            authz_cache: DecisionCache::new(AUTHZ_CACHE_ENTRIES),
            metrics,
            failing: AtomicBool::new(false),
        })
    }

    /// The cache key of a credential (and event, for authorization).
    fn key(&self, credential: Credential<'_>, event: Option<&str>) -> Key {
        let kind = matches!(credential, Credential::Cookie(_));
        let what = (kind, credential.secret(), event);
        (u128::from(self.keys.0.hash_one(what)) << 64) | u128::from(self.keys.1.hash_one(what))
    }

    /// How long an answer is kept: the TTL, shorter for a denial, never
    /// for a failure.
    fn keep(&self, allowed: Result<bool, &Failure>) -> Duration {
        match allowed {
            Ok(true) => self.ttl,
            Ok(false) => self.ttl.min(NEGATIVE_TTL),
            Err(_) => Duration::ZERO,
        }
    }

    fn who_am_i(&self, credential: Credential<'_>) -> Result<WhoAmI, Failure> {
        let answer = self.client.get(
            "/users/me?fields=id",
            credential,
            self.auth_timeout,
            SMALL_ANSWER_BYTES,
        );
        let result = match answer {
            Ok((200, body)) => user_id(&body).map(WhoAmI::User).ok_or_else(|| Failure {
                timeout: false,
                detail: "directus: /users/me answered 200 without data.id".to_owned(),
            }),
            Ok((401 | 403, _)) => Ok(WhoAmI::Denied),
            Ok((status, _)) => Err(Failure {
                timeout: false,
                detail: format!("directus: /users/me answered {status}"),
            }),
            Err(failure) => Err(failure),
        };
        self.note(result.as_ref().err());
        result
    }

    fn may_read(&self, credential: Credential<'_>, event: &str) -> Result<bool, Failure> {
        let path = format!("{}{}?fields=id", self.events_path, encode_segment(event));
        let result =
            match self.client.get(&path, credential, self.authz_timeout, SMALL_ANSWER_BYTES) {
                Ok((200, _)) => Ok(true),
                Ok((401 | 403 | 404, _)) => Ok(false),
                Ok((status, _)) => Err(Failure {
                    timeout: false,
                    detail: format!("directus: {} answered {status}", self.events_path),
                }),
                Err(failure) => Err(failure),
            };
        self.note(result.as_ref().err());
        result
    }

    /// Logs the start and the end of an outage.
    fn note(&self, failure: Option<&Failure>) {
        match failure {
            Some(f) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!("{f}; upgrades get 503 and subscribes authz-unavailable meanwhile");
                }
            }
            None => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!("directus: answering again");
                }
            }
        }
    }

    fn hit(&self, served: Served, kind: &str) -> bool {
        let cached = served == Served::Shared;
        if cached {
            self.metrics.auth_cache_hits.with_label_values(&[kind]).inc();
        }
        cached
    }
}

/// `data.id` of `{"data":{"id":...}}`: Directus user ids are UUIDs, but
/// a number is taken as well.
fn user_id(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    match value.get("data")?.get("id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Authenticator for Directus {
    fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthError> {
        self.authenticate_traced(credentials).0
    }

    fn authorize(&self, who: &Identity, event: &str) -> Result<(), AuthzError> {
        self.authorize_traced(who, event).0
    }

    fn authenticate_traced(
        &self,
        credentials: &Credentials,
    ) -> (Result<Identity, AuthError>, Outcome) {
        // No credential (or one no Directus could have issued): no request.
        let Some(credential) = Credential::of(credentials).filter(|c| c.sendable()) else {
            return (Err(AuthError::Denied), Outcome::Denied);
        };
        let (answer, served) = self.auth_cache.get_or_fetch(
            self.key(credential, None),
            self.auth_timeout + WAIT_MARGIN,
            |a| self.keep(a.as_ref().map(|w| matches!(w, WhoAmI::User(_)))),
            || self.who_am_i(credential),
        );
        let cached = self.hit(served, "auth");
        let (result, outcome) = match answer {
            Ok(WhoAmI::User(user)) => {
                (Ok(Identity { user, credentials: credentials.clone() }), Outcome::Ok)
            }
            Ok(WhoAmI::Denied) => (Err(AuthError::Denied), Outcome::Denied),
            Err(f) => {
                debug!("{f}");
                let outcome = if f.timeout { Outcome::Timeout } else { Outcome::Error };
                (Err(AuthError::Unavailable(f.detail)), outcome)
            }
        };
        (result, if cached { Outcome::Cached } else { outcome })
    }

    fn authorize_traced(&self, who: &Identity, event: &str) -> (Result<(), AuthzError>, Outcome) {
        let Some(credential) = Credential::of(&who.credentials).filter(|c| c.sendable()) else {
            return (Err(AuthzError::Forbidden), Outcome::Denied);
        };
        let (answer, served) = self.authz_cache.get_or_fetch(
            self.key(credential, Some(event)),
            self.authz_timeout + WAIT_MARGIN,
            |a| self.keep(a.as_ref().copied()),
            || self.may_read(credential, event),
        );
        let cached = self.hit(served, "authz");
        let (result, outcome) = match answer {
            Ok(true) => (Ok(()), Outcome::Ok),
            Ok(false) => (Err(AuthzError::Forbidden), Outcome::Denied),
            Err(f) => {
                debug!("{f}");
                let outcome = if f.timeout { Outcome::Timeout } else { Outcome::Error };
                (Err(AuthzError::Unavailable), outcome)
            }
        };
        (result, if cached { Outcome::Cached } else { outcome })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn credentials_pick_the_token_before_the_cookie() {
        let both = Credentials {
            bearer: Some(Secret::new("t")),
            query: None,
            cookie: Some(Secret::new("c")),
        };
        assert!(matches!(Credential::of(&both), Some(Credential::Bearer("t"))));
        let cookie = Credentials { cookie: Some(Secret::new("c")), ..Credentials::default() };
        assert!(matches!(Credential::of(&cookie), Some(Credential::Cookie("c"))));
        assert!(Credential::of(&Credentials::default()).is_none());
        assert_eq!(format!("{:?}", Credential::Bearer("secret")), "Bearer(***)");
    }

    #[test]
    fn reads_the_user_id() {
        assert_eq!(user_id(br#"{"data":{"id":"u-1"}}"#).as_deref(), Some("u-1"));
        assert_eq!(user_id(br#"{"data":{"id":7}}"#).as_deref(), Some("7"));
        assert_eq!(user_id(br#"{"data":null}"#), None);
        assert_eq!(user_id(br#"{"data":{"id":""}}"#), None);
        assert_eq!(user_id(b"<html>"), None);
    }
}
