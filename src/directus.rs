//! The blocking HTTP client of one Directus (`DIRECTUS_BASE_URL`), shared
//! by the `directus` auth mode (`auth/directus.rs`: `/users/me`, item
//! permissions) and the device map (`source/device_map.rs`: the devices
//! collection).
//!
//! It owns no thread: requests run on the caller's, which blocks for at
//! most the timeout it gives, a connection thread (`ws-xxxxxxxx`) for auth,
//! the `device-map` thread for the map. The credential travels only in a
//! request header and is never logged; `Debug` shows its kind only.

use std::fmt::{self, Write as _};
use std::time::Duration;

/// Name of the Directus session cookie.
pub(crate) const SESSION_COOKIE: &str = "directus_session_token";

/// Idle keep-alive connections to Directus are dropped after this, before
/// Node's default 5 s keep-alive timeout closes them on the other side.
const IDLE_CONNECTION_AGE: Duration = Duration::from_secs(4);

/// Why a Directus request produced no answer: a failure, never cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The request ran out of time (the `timeout` outcome), rather than
    /// failing otherwise (`error`).
    pub(crate) timeout: bool,
    /// For the log; holds no credential.
    pub(crate) detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// A credential in the form it is sent to Directus.
#[derive(Clone, Copy)]
pub(crate) enum Credential<'a> {
    /// `Authorization: Bearer <token>`: a static token, or an access token
    /// given by header or query.
    Bearer(&'a str),
    /// `Cookie: directus_session_token=<token>`.
    Cookie(&'a str),
}

impl fmt::Debug for Credential<'_> {
    /// Only the kind: the value is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Bearer(_) => f.write_str("Bearer(***)"),
            Credential::Cookie(_) => f.write_str("Cookie(***)"),
        }
    }
}

impl<'a> Credential<'a> {
    /// The secret itself, whichever its kind.
    pub(crate) fn secret(self) -> &'a str {
        match self {
            Credential::Bearer(s) | Credential::Cookie(s) => s,
        }
    }

    /// Whether it can be sent as a header value unchanged: visible ASCII,
    /// and for a cookie RFC 6265's cookie-octets. Anything else is no
    /// credential Directus could have issued.
    pub(crate) fn sendable(self) -> bool {
        let visible = |b: u8| (0x21..=0x7e).contains(&b);
        match self {
            Credential::Bearer(s) => !s.is_empty() && s.bytes().all(visible),
            Credential::Cookie(s) => {
                !s.is_empty() && s.bytes().all(|b| visible(b) && !b"\",;\\".contains(&b))
            }
        }
    }
}

/// A blocking HTTP client for one Directus, shared by every thread.
///
/// Cheap to share: `ureq::Agent` keeps a pool of keep-alive connections
/// behind a mutex held only to take or return a connection.
#[derive(Debug)]
pub(crate) struct Client {
    agent: ureq::Agent,
    /// `DIRECTUS_BASE_URL`, without a trailing slash.
    base: String,
}

impl Client {
    /// A client for the Directus at `base`; connections are made (and
    /// then kept alive) by the first requests.
    pub(crate) fn new(base: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            // Statuses are answers here (401, 403), not errors.
            .http_status_as_error(false)
            // The Directus API does not redirect; following one would send
            // the credential's request somewhere else.
            .max_redirects(0)
            .user_agent(concat!("livecast/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections_per_host(16)
            .max_idle_age(IDLE_CONNECTION_AGE)
            .build()
            .into();
        Client { agent, base: base.trim_end_matches('/').to_owned() }
    }

    /// `GET <base><path>` with `credential`, all of it (connect, request,
    /// answer, body) within `timeout`. Returns the status and up to
    /// `limit` bytes of body.
    ///
    /// # Errors
    /// A [`Failure`] when no complete answer came: timeout, refused
    /// connection, TLS or protocol error, body over `limit`.
    pub(crate) fn get(
        &self,
        path: &str,
        credential: Credential<'_>,
        timeout: Duration,
        limit: u64,
    ) -> Result<(u16, Vec<u8>), Failure> {
        let request =
            self.agent.get(format!("{}{path}", self.base)).header("Accept", "application/json");
        let request = match credential {
            Credential::Bearer(token) => request.header("Authorization", format!("Bearer {token}")),
            Credential::Cookie(cookie) => {
                request.header("Cookie", format!("{SESSION_COOKIE}={cookie}"))
            }
        };
        let mut response =
            request.config().timeout_global(Some(timeout)).build().call().map_err(failure)?;
        let status = response.status().as_u16();
        let body = response.body_mut().with_config().limit(limit).read_to_vec();
        match body {
            Ok(body) => Ok((status, body)),
            // The status is the answer; a denial's body is only read so
            // that the connection can go back to the pool.
            Err(_) if status != 200 => Ok((status, Vec::new())),
            Err(e) => Err(failure(e)),
        }
    }
}

fn failure(e: ureq::Error) -> Failure {
    match e {
        ureq::Error::Timeout(which) => {
            Failure { timeout: true, detail: format!("directus: timed out ({which})") }
        }
        e => Failure { timeout: false, detail: format!("directus: {e}") },
    }
}

/// Percent-encodes `s` as one URL path segment: every byte outside RFC
/// 3986's unreserved set (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, so `/`,
/// `?`, `#`, `%` and `..` cannot leave the segment. A segment of only dots
/// has its dots encoded too: `.` and `..` are path operations, not names.
pub(crate) fn encode_segment(s: &str) -> String {
    let all_dots = s.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        let unreserved =
            b.is_ascii_alphanumeric() || b"-_~".contains(&b) || (b == b'.' && !all_dots);
        if unreserved {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_stay_one_segment() {
        assert_eq!(encode_segment("e-42"), "e-42");
        assert_eq!(encode_segment("a/b"), "a%2Fb");
        assert_eq!(encode_segment("x?y#z"), "x%3Fy%23z");
        assert_eq!(encode_segment("100%"), "100%25");
        assert_eq!(encode_segment(".."), "%2E%2E");
        assert_eq!(encode_segment("."), "%2E");
        assert_eq!(encode_segment("v1.2"), "v1.2");
        assert_eq!(encode_segment("../users"), "..%2Fusers");
        assert_eq!(encode_segment("@evil.example:80"), "%40evil.example%3A80");
        assert_eq!(encode_segment("é "), "%C3%A9%20");
    }

    #[test]
    fn only_header_safe_credentials_are_sent() {
        assert!(Credential::Bearer("eyJ.a-b_c.d~e=").sendable());
        assert!(!Credential::Bearer("a b").sendable());
        assert!(!Credential::Bearer("a\r\nX-Evil: 1").sendable());
        assert!(!Credential::Bearer("").sendable());
        assert!(Credential::Cookie("abc123").sendable());
        assert!(!Credential::Cookie("a;b").sendable());
    }
}
