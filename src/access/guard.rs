//! The bearer guard: actix-web-httpauth extracts the token, we compare it in constant time.

use actix_web::dev::ServiceRequest;
use actix_web::{Error, web};
use actix_web_httpauth::extractors::bearer::BearerAuth;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::error::ApiError;

/// The accepted token, kept only as its SHA-256 digest. Comparing digests in constant time
/// also hides the token's length from a timing observer.
#[derive(Clone)]
pub struct TokenCheck {
    digest: [u8; 32],
}

impl TokenCheck {
    pub fn new(token: &Secret) -> Self {
        Self {
            digest: Sha256::digest(token.expose().as_bytes()).into(),
        }
    }

    pub fn accepts(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented.ct_eq(&self.digest).into()
    }
}

/// Validator for `HttpAuthentication::with_fn`. Taking `Option<BearerAuth>` means a missing or
/// malformed header reaches us too, so every failure gets the same JSON 401.
pub async fn validate(
    req: ServiceRequest,
    credentials: Option<BearerAuth>,
) -> Result<ServiceRequest, (Error, ServiceRequest)> {
    let accepted = match (credentials, req.app_data::<web::Data<TokenCheck>>()) {
        (Some(credentials), Some(check)) => check.accepts(credentials.token()),
        // No check registered would be a wiring bug: fail closed.
        _ => false,
    };
    if accepted {
        Ok(req)
    } else {
        Err((ApiError::Unauthorized.into(), req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_exact_token() {
        let check = TokenCheck::new(&secret("correct-horse-battery"));
        assert!(check.accepts("correct-horse-battery"));
        assert!(!check.accepts("correct-horse-batter"));
        assert!(!check.accepts("correct-horse-battery "));
        assert!(!check.accepts(""));
    }

    fn secret(s: &str) -> Secret {
        crate::config::Secret::for_tests(s)
    }
}
