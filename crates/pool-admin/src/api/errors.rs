//! [`ApiError`], every refusal of the admin API as a JSON [`wire::Error`] with its status, and
//! the extractors that turn axum's own rejections (a body or a path it cannot read) into one.

use axum::Json;
use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pool_core::LookupError;
use serde::de::DeserializeOwned;

use super::BODY_LIMIT;
use super::wire;

/// An error answer: a [`wire::Error`] body (`{"error": "...", "pool": "..."}`) with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    pool: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), pool: None }
    }

    /// The error about `pool`: its id, or the name the request gave when it names none.
    pub(super) fn about(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }

    /// A name that names no pool (404) or several (409).
    pub(super) fn lookup(e: LookupError, pool: &str) -> Self {
        let status = match e {
            LookupError::Ambiguous { .. } => StatusCode::CONFLICT,
            _ => StatusCode::NOT_FOUND,
        };
        ApiError::new(status, e.to_string()).about(pool)
    }

    /// A body over [`BODY_LIMIT`].
    fn too_large() -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {BODY_LIMIT} bytes"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = wire::Error { error: self.message, pool: self.pool };
        (self.status, Json(body)).into_response()
    }
}

/// A request's JSON body as a `T`: 415 for another content type, 400 when it does not parse,
/// 422 when it is JSON but not an object (serde would read an array as a struct's fields in
/// order) or not a `T`, and 413 for a body over [`BODY_LIMIT`].
pub(super) fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = read(body)?;
    json_object(headers, &body)
}

/// [`json_body`] for a body that may be left out: no body (or only blanks) is `None`.
pub(super) fn optional_json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Option<T>, ApiError> {
    let body = read(body)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    json_object(headers, &body).map(Some)
}

/// The body's bytes, or why they could not be read (413 past [`BODY_LIMIT`]).
fn read(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(),
        status => ApiError::new(status, rejection.body_text()),
    })
}

/// `body` as a `T`, given that it is a JSON object sent as JSON.
fn json_object<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .is_some_and(|t| t == "application/json" || t.ends_with("+json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected request with `Content-Type: application/json`",
        ));
    }
    let rejected = |r: JsonRejection| ApiError::new(r.status(), r.body_text());
    let Json(value) = Json::<serde_json::Value>::from_bytes(body).map_err(rejected)?;
    if !value.is_object() {
        let kind = match value {
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid body: expected a JSON object, got {kind}"),
        ));
    }
    Json::<T>::from_bytes(body).map(|Json(v)| v).map_err(rejected)
}

/// A path segment as a `String`, whose rejection (a segment that is not UTF-8 once
/// percent-decoded: 400) is a JSON error like any other, rather than axum's plain text.
#[derive(Debug)]
pub(super) struct PoolName(pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for PoolName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(name)) => Ok(PoolName(name)),
            Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
        }
    }
}
