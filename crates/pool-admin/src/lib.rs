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
//! # Features
//!
//! - `postgres` (default): PostgreSQL clusters through pool-postgres (sqlx): the config's
//!   `[postgres.*]` tables (`PostgresConfig`), replica bans and lag in the routes, and the
//!   servers' connection budgets.
//! - `redis` (default): Redis pools through pool-redis (fred): the config's `[redis.*]` tables and
//!   `redis_url`, redis-py's numbers in the stats route, and the Redis server's client budget.
//!
//! Without a backend's feature none of its driver is built, and [`AdminConfig::load`] refuses a
//! file that sets its keys with [`ConfigError::NotBuilt`]. The routes, the optimizer and the
//! server work the same over whatever pools the registry holds.
//!
//! # Examples
//!
//! ```
//! use pool_admin::{Secret, Server};
//!
//! # async fn f() -> Result<(), pool_admin::ServeError> {
//! let pools = pool_core::Registry::new(); // register your pools here
//! let admin = Server::builder(pools).token(Secret("s3cret".to_owned())).start().await?;
//! let app: axum::Router = axum::Router::new().merge(admin.router());
//! # drop(app);
//! admin.shutdown().await; // when the service stops
//! # Ok(()) }
//! ```

/// The axum the [`router`] is built with: a service mounts it in an app of this version.
pub use axum;

mod api;
mod config;
pub mod dashboard;
mod pools;
mod server;

pub use crate::api::{AdminState, ApiError, PREFIX, openapi, router, wire};
#[cfg(feature = "postgres")]
pub use crate::config::PostgresConfig;
pub use crate::config::{AdminConfig, ConfigError, Secret, ServerConfig, redact};
pub use crate::pools::{Pools, StartError};
pub use crate::server::{Admin, ServeError, Server, ServerBuilder};
