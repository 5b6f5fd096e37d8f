//! The admin API's OpenAPI document, derived with utoipa from the [`wire`](super::wire) types
//! and the handlers' annotations, and adjusted to what one router serves: which routes need the
//! token (each of those answers 401 with a `WWW-Authenticate` challenge) and whether the
//! dashboard is there.

use utoipa::OpenApi as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, ObjectBuilder, OpenApi, Ref, ResponseBuilder, Type,
};
use utoipa::openapi::{RefOr, Required};

use super::{PREFIX, handlers, wire};
use crate::dashboard;

/// The name of the bearer security scheme.
const BEARER: &str = "bearer";

/// The API's description, the document's `info.description`.
const DESCRIPTION: &str = "Admin API of the connection pools: stats, health, sizing advice, \
runtime resize. Every route needs `Authorization: Bearer <token>` (the scheme in any case) unless \
its operation says `security: []`: `/metrics` may be configured open, and the dashboard's static \
page (`/dashboard/`) holds no data and fetches everything from these routes with the token the \
user gives it.\n\n\
Every pool is named by its id, `backend:name` (`postgresql:main`, `redis:cache`), in every \
response: the keys of the stats, health, optimize and config maps, and the `pool` of \
recommendations, decisions, replicas and resizes. A request may name a pool by its id or by a \
name only one backend uses. Durations are seconds.\n\n\
Every error is an `Error` body with its status. A path the server does not serve answers 404, \
and a method a path does not serve answers 405 with an `Allow` header listing those it does.";

/// The document's derivation: every operation and the schemas they use.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "pool-admin", description = DESCRIPTION),
    paths(
        handlers::stats,
        handlers::health,
        handlers::optimize,
        handlers::config,
        handlers::reset_stats,
        handlers::resize,
        handlers::metrics,
        handlers::openapi,
        dashboard_page,
    ),
    components(schemas(wire::Error)),
    security(("bearer" = [])),
)]
struct Derived;

/// The dashboard's page; also `/dashboard/app.js` and `/dashboard/app.css`
///
/// No token: the page holds no data and asks the routes above for it with the token the user
/// enters (or passes once as a `#token=` URL fragment). Absent when the server's
/// `admin.dashboard` is false.
#[utoipa::path(
    get,
    path = "/dashboard/",
    operation_id = "dashboard",
    security(()),
    responses((status = 200, description = "The page", body = String, content_type = "text/html")),
)]
#[allow(dead_code, reason = "documents the route `crate::dashboard` serves; never called")]
fn dashboard_page() {}

/// The admin API's OpenAPI 3.1 document as the default router serves it: every admin route and
/// `/metrics` behind the bearer token, and the dashboard served. A service that mounts the
/// [`router`](crate::router) can merge it into its own document (`OpenApi::merge`).
///
/// # Examples
///
/// ```
/// let doc = pool_admin::openapi();
/// assert!(doc.paths.paths.contains_key("/api/v1/admin/connection-pools/stats"));
/// let json = doc.to_pretty_json().unwrap();
/// # drop(json);
/// ```
pub fn openapi() -> OpenApi {
    document(false, true)
}

/// The document as a router serves it: `/metrics` open when `metrics_open`, the dashboard's
/// path only when `dashboard`.
pub(super) fn document(metrics_open: bool, dashboard: bool) -> OpenApi {
    let mut doc = Derived::openapi();
    doc.info.license = None;
    if !dashboard {
        doc.paths.paths.remove(dashboard::PATH);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        BEARER.to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The server's admin token (`admin.token`, `POOL_ADMIN_TOKEN`)"))
                .build(),
        )
        .into(),
    );
    let unauthorized = ResponseBuilder::new()
        .description("Missing or wrong bearer token")
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build(),
        )
        .header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .description(Some(
                    "The scheme to use: `Bearer realm=\"pool-admin\"`, with \
                     `error=\"invalid_token\"` when a token was given and refused",
                ))
                .build(),
        )
        .build();
    // The reset's body may be left out, which utoipa cannot say of a body that is not an
    // `Option` (and an `Option` would allow a `null` body, which is refused).
    let reset = format!("{PREFIX}/reset-stats");
    if let Some(RefOr::T(body)) = doc
        .paths
        .paths
        .get_mut(&reset)
        .and_then(|item| item.post.as_mut())
        .and_then(|post| post.request_body.as_mut())
    {
        body.required = Some(Required::False);
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let open = path == "/metrics" && metrics_open;
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            // utoipa tags each operation with its handler's module; the API has no groups.
            operation.tags = None;
            let declared_open = operation.security.as_ref().is_some_and(|s| is_open(s));
            if open || declared_open {
                operation.security = Some(Vec::new());
            } else {
                operation.responses.responses.insert("401".to_owned(), unauthorized.clone().into());
            }
        }
    }
    doc
}

/// Whether `security` lets a request through without credentials: an empty list, or a list
/// holding the empty requirement (`{}`).
fn is_open(security: &[SecurityRequirement]) -> bool {
    security.is_empty() || security.iter().any(|r| *r == SecurityRequirement::default())
}
