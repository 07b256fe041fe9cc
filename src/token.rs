//! The access token as an upstream hands it over: the one value that crosses every layer
//! (credentials produce it, the broker caches it, the store persists it, the server renders
//! it). It sits at the bottom, next to [`crate::secret`], so none of those layers has to
//! depend on another to name it.

use crate::secret::Secret;

/// A token as the upstream handed it over, with its timing in epoch seconds.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The bearer token itself.
    pub token: Secret,
    /// When the token stops being valid.
    pub expires_on: u64,
    /// When the token started being valid (the issue time when the upstream does not say).
    pub not_before: u64,
    /// The extended lifetime Entra grants for outages, as an absolute time.
    pub ext_expires_on: u64,
    /// When the upstream suggests refreshing (`refresh_in`), as an absolute time.
    pub refresh_on: Option<u64>,
}

impl AccessToken {
    /// A token valid from `not_before` to `expires_on` with no extended lifetime and no
    /// refresh hint: what developer tools and the development issuer hand over, which carry
    /// neither.
    pub fn with_lifetime(token: Secret, not_before: u64, expires_on: u64) -> Self {
        Self { token, expires_on, not_before, ext_expires_on: expires_on, refresh_on: None }
    }
}
