//! Mode `tokens`: `{"<token>":{"user":"alice","events":["e-42","*"]}}`.
//!
//! The file is re-read when its modification time or length changes, checked
//! on every authentication and authorization (one `stat`, on the asking
//! connection's `ws-xxxxxxxx` thread), so that adding or revoking a token
//! needs no restart. A file that becomes unreadable or invalid keeps the
//! previous tokens and is logged, by line and column only: serde's own
//! message quotes the offending value, which may be a token (SPEC §9,
//! "Logs").

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use log::{info, warn};
use parking_lot::Mutex;
use serde::Deserialize;

use super::{AuthError, Authenticator, AuthzError, Credentials, Identity};
use crate::logging::json_error_at;

#[derive(Debug, Deserialize)]
struct Grant {
    user: String,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Debug, Default)]
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    grants: HashMap<String, Grant>,
}

/// The `tokens` authority.
#[derive(Debug)]
pub(crate) struct TokenFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl TokenFile {
    /// Loads the file once; a file that cannot be read at start is an error.
    pub(crate) fn open(path: PathBuf) -> Result<TokenFile, String> {
        let file = TokenFile { path, loaded: Mutex::new(Loaded::default()) };
        {
            let mut loaded = file.loaded.lock();
            file.reload(&mut loaded)?;
        }
        Ok(file)
    }

    /// Re-reads the file when its stamp changed. Holds the lock during the
    /// read: a token file is small, and concurrent readers want the new one.
    fn refresh(&self) {
        let mut loaded = self.loaded.lock();
        if stamp(&self.path) != loaded.stamp
            && let Err(e) = self.reload(&mut loaded)
        {
            warn!("{e}; keeping the previous tokens");
            // Do not retry on every request until the file changes again.
            loaded.stamp = stamp(&self.path);
        }
    }

    fn reload(&self, loaded: &mut Loaded) -> Result<(), String> {
        let shown = self.path.display();
        let before = stamp(&self.path);
        let text = std::fs::read(&self.path).map_err(|e| format!("tokens file {shown}: {e}"))?;
        let grants: HashMap<String, Grant> = serde_json::from_slice(&text).map_err(|e| {
            format!(
                "tokens file {shown}: {}; expected {{\"<token>\":{{\"user\":\"...\",\"events\":[...]}}}}",
                json_error_at(&e)
            )
        })?;
        info!("tokens file {shown}: {} tokens", grants.len());
        *loaded = Loaded { stamp: before, grants };
        Ok(())
    }

    fn events_of(&self, token: &str) -> Option<(String, Vec<String>)> {
        self.refresh();
        let loaded = self.loaded.lock();
        loaded.grants.get(token).map(|g| (g.user.clone(), g.events.clone()))
    }
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Authenticator for TokenFile {
    fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthError> {
        let token = credentials.token().ok_or(AuthError::Denied)?;
        let (user, _) = self.events_of(token.expose()).ok_or(AuthError::Denied)?;
        Ok(Identity { user, credentials: credentials.clone() })
    }

    /// Looks the token up again, so that a revoked token or a narrowed event
    /// list applies to the next subscribe of an open connection.
    fn authorize(&self, who: &Identity, event: &str) -> Result<(), AuthzError> {
        let token = who.credentials.token().ok_or(AuthzError::Forbidden)?;
        let (_, events) = self.events_of(token.expose()).ok_or(AuthzError::Forbidden)?;
        if events.iter().any(|e| e == "*" || e == event) {
            Ok(())
        } else {
            Err(AuthzError::Forbidden)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_give_the_place_never_the_value() {
        // What serde itself would have logged.
        let e = serde_json::from_str::<HashMap<String, Grant>>(r#"{"alice":"tok-secret-1"}"#);
        assert!(e.unwrap_err().to_string().contains("tok-secret-1"));
        for (text, kind) in [
            (r#"{"alice":"tok-secret-1"}"#, "unexpected JSON shape at line 1 column "),
            (r#"{"tok-secret-1":{"user":5}}"#, "unexpected JSON shape at line 1 column "),
            ("{\n \"tok-secret-1\" x", "invalid JSON at line 2 column "),
            (r#"{"tok-secret-1":"#, "JSON cut short at line 1 column "),
        ] {
            let e = serde_json::from_str::<HashMap<String, Grant>>(text).unwrap_err();
            let shown = json_error_at(&e);
            assert!(shown.starts_with(kind), "{shown}");
            assert!(!shown.contains("tok-"), "{shown}");
        }
    }
}
