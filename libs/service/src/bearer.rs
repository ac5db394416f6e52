//! The bearer-key check of fleetward's HTTP APIs (the gateway's command
//! API, billing's API): `Authorization: Bearer <key>`, compared in constant
//! time, refused with 401 and `WWW-Authenticate: Bearer`.
//!
//! [`require`] is the check as an axum middleware; an API that does more on
//! a refusal (the gateway audits it and throttles the caller) calls
//! [`BearerKey::admits`] and answers [`refusal`] itself.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The one key an API accepts. Only its SHA-256 is kept: comparing digests
/// makes the check constant-time whatever the presented key's length.
#[derive(Clone)]
pub struct BearerKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for BearerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerKey(<redacted>)")
    }
}

impl BearerKey {
    pub fn new(key: &str) -> Self {
        Self {
            digest: Sha256::digest(key.as_bytes()).into(),
        }
    }

    /// Whether `headers` carry `Authorization: Bearer <this key>`.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        !presented.is_empty() && bool::from(digest.ct_eq(&self.digest))
    }
}

/// 401 `{"error": "missing or wrong bearer key"}` with `WWW-Authenticate: Bearer`.
pub fn refusal() -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({"error": "missing or wrong bearer key"})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

/// Middleware: `axum::middleware::from_fn_with_state(key, require)`.
pub async fn require(State(key): State<BearerKey>, req: Request, next: Next) -> Response {
    if key.admits(req.headers()) {
        next.run(req).await
    } else {
        refusal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn admits_only_the_exact_key_as_bearer() {
        let key = BearerKey::new("s3cret-key-of-some-length");
        assert!(key.admits(&headers("Bearer s3cret-key-of-some-length")));
        assert!(!key.admits(&headers("Bearer s3cret-key-of-some-lengtH")));
        assert!(!key.admits(&headers("Bearer s3cret")));
        assert!(!key.admits(&headers("bearer s3cret-key-of-some-length")));
        assert!(!key.admits(&headers("Basic s3cret-key-of-some-length")));
        assert!(!key.admits(&headers("s3cret-key-of-some-length")));
        assert!(!key.admits(&HeaderMap::new()));
        // An empty key never admits an empty bearer.
        assert!(!BearerKey::new("").admits(&headers("Bearer ")));
    }

    #[test]
    fn debug_hides_the_key() {
        let shown = format!("{:?}", BearerKey::new("s3cret"));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains(&hex(&Sha256::digest(b"s3cret"))), "{shown}");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn refusal_is_401_with_a_bearer_challenge() {
        let r = refusal();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
