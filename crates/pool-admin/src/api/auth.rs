//! The bearer token every admin route requires: the middleware that checks it in constant time
//! and answers 401 with the `WWW-Authenticate` challenge.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{AdminState, ApiError};

/// The challenge of a 401 without a token (RFC 7235 section 4.1).
pub(super) const CHALLENGE: &str = r#"Bearer realm="pool-admin""#;

/// The challenge of a 401 for a refused token (RFC 6750 section 3).
pub(super) const CHALLENGE_REFUSED: &str = r#"Bearer realm="pool-admin", error="invalid_token""#;

/// Lets the request through when it carries the state's token; else 401.
pub(super) async fn require_token(
    State(state): State<AdminState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    // A 401 names the scheme it wants (RFC 7235 section 4.1), and a refused token as such
    // (RFC 6750 section 3), so that HTTP clients and proxies know what to send.
    let refuse = |message: &'static str, challenge: &'static str| {
        let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    };
    match given {
        None => refuse("missing bearer token", CHALLENGE),
        Some(token)
            if bool::from(token.as_bytes().ct_eq(state.inner.token.expose().as_bytes())) =>
        {
            next.run(req).await
        }
        Some(_) => refuse("wrong bearer token", CHALLENGE_REFUSED),
    }
}

/// The token of an `Authorization` header's value `Bearer <token>`. The scheme is matched in any
/// case (`bearer`, `BEARER`: RFC 7235 makes auth schemes case-insensitive); blanks around the
/// token are ignored. `None` for another scheme or no token at all.
pub(super) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
