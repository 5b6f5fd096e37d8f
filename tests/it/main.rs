//! The workspace's one integration test binary; each module tests one area against real servers.

mod admin; // pool-admin over a real socket: stats, reset, resize, health flips, metrics
mod clock; // every pool built here reads the clock that ships, whatever features cargo unified
mod dashboard; // pool-admin's dashboard in headless Chromium: charts, numbers, resize, auth
mod harness; // the throwaway PostgreSQL and Redis launchers themselves
mod metrics; // pool-metrics over real postgres and redis pools, both exporters
mod optimizer; // the auto-tuner in a closed loop against real postgres
mod pg_failover; // pool-postgres: a frozen server within every bound, a primary promoted
mod postgres; // pool-postgres: the guard, reset on return, broken connections, restarts, lifetimes, replicas
mod redis; // pool-redis: both paths, WATCH, BLPOP, kills, restarts, named pools
mod redis_ha; // pool-redis: a frozen server on both paths, Sentinel failover, Cluster failover
mod redis_tls; // pool-redis: TLS, client certificates, rotated passwords, expiring tokens, connect hooks, Unix sockets
mod replicas; // pool-postgres: read-your-writes and lag per server behind one replica address
mod session; // pool-postgres: no state crosses from one user of a connection to the next
mod tls; // pool-postgres: TLS in every sslmode, client certificates, rotating credentials, connect hooks, Unix sockets
