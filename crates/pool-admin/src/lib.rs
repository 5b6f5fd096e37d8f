//! `pool-admin`: the connection pools' admin API — an axum [`router`] a service mounts in its
//! own app — and the [`Server`] that runs the pools of an [`AdminConfig`] behind it. The
//! `pool-admin` binary (`serve`, `monitor`, `config check`) is the `pool-admin-cli` package,
//! so that embedding the router builds no command line, HTTP client or log formatter.
//!
//! Routes, under `/api/v1/admin/connection-pools/`: `GET stats`, `GET health`, `GET optimize`, `GET
//! config`, `POST reset-stats`, `POST pools/{pool}/resize`; plus `GET /metrics` (Prometheus) and
//! `GET /api/v1/admin/openapi.json`. Every API route needs a bearer token, and so does `/metrics`
//! unless `metrics_open` is set. The bodies are the [`wire`] types, from which the OpenAPI
//! document ([`openapi`]) is derived. `GET /dashboard/` serves a page of live charts and controls whose
//! data comes from those routes, with the token the user gives it (the [`dashboard`] module says
//! how).
//!
//! # Examples
//!
//! ```
//! use pool_admin::{AdminState, Secret, router};
//!
//! let pools = pool_core::Registry::new(); // register your pools here
//! let admin = router(AdminState::builder(pools, Secret("s3cret".to_owned())).build());
//! let app: axum::Router = axum::Router::new().merge(admin);
//! # drop(app);
//! ```

mod api;
mod config;
pub mod dashboard;
mod pools;
mod server;

pub use crate::api::{AdminState, AdminStateBuilder, ApiError, PREFIX, openapi, router, wire};
pub use crate::config::{AdminConfig, ConfigError, PostgresConfig, Secret, ServerConfig, redact};
pub use crate::pools::{Pools, StartError};
pub use crate::server::{ServeError, Server};
