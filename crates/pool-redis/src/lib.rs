//! Named Redis pools over fred: exclusive checkout and shared multiplexed clients.
#![doc = include_str!("../README.md")]

mod auth;
mod config;
mod connection;
mod error;
mod hook;
mod manager;
mod pool;
mod reset;
mod shared;
mod stats;
mod tls;

pub use fred;
/// The engine this crate is built on (`Registry`, the `DynPool` trait), so users get the matching
/// version without a dependency of their own.
pub use pool_core;

pub use crate::config::{DEFAULT_URL, PoolSettings, RedisConfig};
pub use crate::connection::RedisConnection;
pub use crate::error::{AcquireError, BuildError, ConfigError};
pub use crate::hook::ConnectHook;
pub use crate::manager::RedisManager;
pub use crate::pool::{ExclusiveConnection, RedisPool, RedisPools};
pub use crate::stats::RedisStats;
