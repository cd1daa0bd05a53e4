//! Mode `none`: everyone is `anonymous` and may subscribe to anything.
//! Only allowed on a loopback listener unless explicitly made insecure.

use super::{AuthError, Authenticator, AuthzError, Credentials, Identity};

/// The `none` authority.
#[derive(Debug)]
pub(crate) struct NoAuth;

impl Authenticator for NoAuth {
    fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthError> {
        Ok(Identity { user: "anonymous".to_owned(), credentials: credentials.clone() })
    }

    fn authorize(&self, _who: &Identity, _event: &str) -> Result<(), AuthzError> {
        Ok(())
    }
}
