//! The dashboard: one page of live charts and controls over the admin API, as plain static
//! assets (hand-written HTML, CSS and JS, no build step) embedded in the binary and served at
//! `/dashboard/`.
//!
//! # What it shows
//!
//! Per pool: connections in use, idle and waiting, the wait-time p99 and checkouts per second
//! over the last five minutes, the pool's numbers and health, and a resize control; replica
//! bans and lag per PostgreSQL cluster; the optimizer's recommendations with their severity and
//! the auto-tuner's decisions. The page polls `GET stats` every second and `GET health` and
//! `GET optimize` every five, and keeps its rolling window itself: checkouts per second are the
//! difference of two readings of the acquire counter, and the p99 of each interval comes from
//! the difference of two readings of the wait-time histogram (`wait_time_histogram`).
//!
//! # Auth
//!
//! A page cannot send a bearer token when the browser navigates to it, so the page's shell (this
//! module's three files, the same for every server) is served without the token and holds no
//! data. Every number comes from the API routes, which the page's script calls with
//! `Authorization: Bearer <token>`: the data stays behind exactly the API's auth, and an answer
//! of 401 sends the page back to its login form with the API's message.
//!
//! The script takes the token from that form, or once from a `#token=...` URL fragment (a
//! browser never sends the fragment to the server, so the token stays out of access logs and
//! proxies; the script removes it from the address bar and history at once). It keeps the token
//! in `sessionStorage`, which this tab alone can read and which is gone when the tab closes. The
//! page's Content-Security-Policy allows scripts, styles and requests only from its own origin
//! and no inline script, so text from the API (pool names, error messages) cannot run as code
//! and read the token; the script also only ever inserts such text as text.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Where the page is served, from the admin router's root.
pub const PATH: &str = "/dashboard/";

/// The page.
const INDEX_HTML: &str = include_str!("dashboard/index.html");
/// Its script: polling, the rolling window, the charts, the resize control.
const APP_JS: &str = include_str!("dashboard/app.js");
/// Its styles.
const APP_CSS: &str = include_str!("dashboard/app.css");

/// Same-origin scripts, styles and requests only; no inline script, no framing, no forms
/// posted anywhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes: `GET /dashboard` (a redirect to the page), `GET /dashboard/`,
/// `GET /dashboard/app.js`, `GET /dashboard/app.css`, none of them needing the token.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/dashboard", get(redirect))
        .route(PATH, get(|| async { file(INDEX_HTML, "text/html; charset=utf-8") }))
        .route(
            "/dashboard/app.js",
            get(|| async { file(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route("/dashboard/app.css", get(|| async { file(APP_CSS, "text/css; charset=utf-8") }))
}

/// `/dashboard` to `/dashboard/`, where the page's relative links resolve. The location is
/// relative, so that it still works when the admin router is nested under a prefix.
async fn redirect() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "dashboard/")]).into_response()
}

/// One embedded file with its content type and the page's security headers.
fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The files change only with the binary; revalidating keeps a new script from meeting an
    // old cached page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests;
