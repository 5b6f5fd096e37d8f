//! The dashboard's routes in-process: the assets with their content types and security headers
//! without a token, the data still behind it, the switch, and the script's calls checked
//! against the OpenAPI document.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use pool_core::testing::TestManager;
use pool_core::{ConnectionPool, Registry};
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::{AdminState, PREFIX, Secret, router};

const TOKEN: &str = "t0ken";

fn app(dashboard: bool) -> Router {
    let registry = Registry::new();
    let pool = ConnectionPool::builder(TestManager::new())
        .name("billing-7f3a")
        .pool_size(2)
        .build()
        .unwrap();
    registry.register(Arc::new(pool)).unwrap();
    let server = crate::ServerConfig { dashboard, ..crate::ServerConfig::default() };
    router(AdminState::builder(registry, Secret(TOKEN.to_owned())).server(&server).build())
}

/// Status, headers and body of `GET uri`, with the token or without.
async fn get(
    app: &Router,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, header::HeaderMap, String) {
    let mut req = Request::builder().uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn the_assets_are_served_without_the_token_with_their_types_and_policy() {
    let app = app(true);
    let cases = [
        ("/dashboard/", "text/html; charset=utf-8", "<script src=\"app.js\""),
        ("/dashboard/app.js", "text/javascript; charset=utf-8", "'use strict';"),
        ("/dashboard/app.css", "text/css; charset=utf-8", ".grid"),
    ];
    for (uri, content_type, excerpt) in cases {
        let (status, headers, body) = get(&app, uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(headers[header::CONTENT_TYPE], content_type, "{uri}");
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CSP, "{uri}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{uri}");
        assert!(body.contains(excerpt), "{uri} lacks {excerpt:?}");
    }
    let (status, headers, _) = get(&app, "/dashboard", None).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers[header::LOCATION], "dashboard/", "relative, for a nested router");
}

#[tokio::test]
async fn the_data_stays_behind_the_token() {
    let app = app(true);
    for uri in ["/dashboard/", "/dashboard/app.js", "/dashboard/app.css"] {
        let (_, _, body) = get(&app, uri, None).await;
        assert!(!body.contains("billing-7f3a"), "{uri} must hold no data");
    }
    for uri in [format!("{PREFIX}/stats"), format!("{PREFIX}/health"), format!("{PREFIX}/optimize")]
    {
        let (status, _, _) = get(&app, &uri, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        let (status, _, _) = get(&app, &uri, Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let (status, _, body) = get(&app, &format!("{PREFIX}/stats"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("billing-7f3a"));
}

#[tokio::test]
async fn the_dashboard_can_be_turned_off() {
    let app = app(false);
    for uri in ["/dashboard", "/dashboard/", "/dashboard/app.js"] {
        let (status, _, _) = get(&app, uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
}

#[test]
fn the_script_calls_only_documented_routes_and_inserts_no_markup() {
    let doc: Value = serde_json::from_str(&crate::openapi().to_json().unwrap()).unwrap();
    // Every `api('...')` or `api(`...`)` call of the script, with `${...}` as `{pool}`.
    let mut calls = Vec::new();
    for piece in APP_JS.split("api(").skip(1) {
        let Some(quote @ ('\'' | '`')) = piece.chars().next() else { continue };
        let path = &piece[1..piece[1..].find(quote).unwrap() + 1];
        let path = match path.split_once("${") {
            Some((head, rest)) => format!("{head}{{pool}}{}", &rest[rest.find('}').unwrap() + 1..]),
            None => path.to_owned(),
        };
        calls.push(path);
    }
    calls.sort();
    assert_eq!(calls, ["health", "optimize", "pools/{pool}/resize", "stats"]);
    for path in calls {
        let full = format!("{PREFIX}/{path}");
        assert!(doc["paths"].get(&full).is_some(), "app.js calls {full}, which the API lacks");
    }
    for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
        assert!(!APP_JS.contains(sink), "app.js uses {sink}: insert API text as text only");
    }
    assert!(!INDEX_HTML.contains("<script>"), "no inline script: the policy forbids it");
    assert!(!INDEX_HTML.contains("style=\""), "no inline style: the policy forbids it");
}
