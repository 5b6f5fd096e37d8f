//! PostgreSQL pools over sqlx's `PgConnection`, and a primary/replica cluster router.
#![doc = include_str!("../README.md")]

mod budget;
mod candidates;
mod cluster;
mod config;
mod connection;
mod error;
mod manager;
mod server;
mod stats;
mod tls;
mod token;

/// The sqlx this crate is built on, so users get the matching version.
pub use sqlx;

/// The engine this crate is built on (`PoolConfig`, `Registry`, the `DynPool` trait), so users get
/// the matching version without a dependency of their own.
pub use pool_core;

pub use crate::budget::connection_budget;
pub use crate::cluster::{ClusterBuilder, PgCluster};
pub use crate::config::PostgresConfig;
pub use crate::connection::{PgConn, ResetOnReturn, ResetOnReturnError};
pub use crate::error::{
    ClusterBuildError, ConfigError, PgError, SessionError, TokenError, UrlError,
};
pub use crate::manager::{ConnectHook, PgManager};
pub use crate::stats::{ClusterStats, ReplicaStats};
pub use crate::tls::{SslMode, SslModeError, TlsError, TlsFailure, TlsSettings};
pub use crate::token::{CausalToken, Lsn};

/// A pool of PostgreSQL connections.
pub type PgPool = pool_core::ConnectionPool<PgManager>;

/// A connection checked out of a [`PgPool`]; derefs to [`PgConn`], which derefs to
/// [`sqlx::PgConnection`].
pub type PgPooledConnection = pool_core::PooledConnection<PgManager>;
