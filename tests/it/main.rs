//! The workspace's one integration test binary; each module tests one area against real servers.

mod harness; // the throwaway PostgreSQL and Redis launchers themselves
mod postgres; // pool-postgres: the guard, reset on return, broken connections, restarts, lifetimes, replicas
mod redis; // pool-redis: both paths, WATCH, BLPOP, kills, restarts, named pools
