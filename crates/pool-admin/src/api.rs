//! The admin API as an axum [`Router`]: stats, health, optimize, config, reset-stats, resize,
//! the OpenAPI document and `/metrics`, behind a bearer token; and the dashboard's page, whose
//! data comes from those routes (see [`crate::dashboard`]). One module per responsibility:
//! `state.rs` (what the routes serve from), `auth.rs` (the token), `errors.rs` (every refusal as
//! JSON), `handlers.rs` (the routes), `wire.rs` (the bodies they send and take) and `openapi.rs`
//! (the document derived from those).

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};

mod auth;
mod errors;
mod handlers;
mod openapi;
mod state;
pub mod wire;

pub use self::errors::ApiError;
pub use self::openapi::openapi;
pub use self::state::AdminState;

/// The prefix of every admin route.
pub const PREFIX: &str = "/api/v1/admin/connection-pools";

/// The largest request body accepted.
const BODY_LIMIT: usize = 16 * 1024;

/// The admin router. Mount it in your own app, or serve it with `pool-admin serve`.
///
/// Every API route needs `Authorization: Bearer <token>` (the scheme in any case);
/// `/metrics` too unless opened. The
/// dashboard's static page under `/dashboard/` (unless turned off) is served without it and
/// asks the API for its data with the token the user gives it.
pub fn router(state: AdminState) -> Router {
    let admin = Router::new()
        .route(&format!("{PREFIX}/stats"), get(handlers::stats))
        .route(&format!("{PREFIX}/health"), get(handlers::health))
        .route(&format!("{PREFIX}/optimize"), get(handlers::optimize))
        .route(&format!("{PREFIX}/config"), get(handlers::config))
        .route(&format!("{PREFIX}/reset-stats"), post(handlers::reset_stats))
        .route(&format!("{PREFIX}/pools/{{pool}}/resize"), post(handlers::resize))
        .route("/api/v1/admin/openapi.json", get(handlers::openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    let metrics = Router::new().route("/metrics", get(handlers::metrics));
    let metrics = if state.inner.metrics_open {
        metrics
    } else {
        metrics.route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
    };
    let admin = admin.merge(metrics);
    let admin = if state.inner.dashboard { admin.merge(crate::dashboard::routes()) } else { admin };
    admin
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed here"))
        })
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

#[cfg(test)]
mod tests;
