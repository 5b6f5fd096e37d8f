//! [`PooledConnection`]: the guard `acquire` hands out; it derefs to the connection and
//! returns it to the pool on drop.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::clock::Instant;

use crate::manager::Manager;
use crate::pool::{Conn, Held, Shared};
use crate::stats::CloseReason;

/// A connection checked out of a [`ConnectionPool`](crate::ConnectionPool).
///
/// Derefs to the backend's connection. Dropping it returns the connection to the pool: straight
/// to the oldest waiter, or to the idle list; a connection the manager reports broken is closed
/// instead, one that needs a reset is reset in a background task first, and one past its
/// lifetime is retired.
pub struct PooledConnection<M: Manager> {
    /// `Some` from creation until `drop`, `detach` or `discard` takes it.
    conn: Option<Conn<M::Connection>>,
    shared: Arc<Shared<M>>,
    acquired_at: Instant,
}

impl<M: Manager> PooledConnection<M> {
    pub(crate) fn new(
        shared: Arc<Shared<M>>,
        conn: Conn<M::Connection>,
        acquired_at: Instant,
    ) -> Self {
        PooledConnection { conn: Some(conn), shared, acquired_at }
    }

    fn conn(&self) -> &Conn<M::Connection> {
        self.conn.as_ref().expect("a guard holds its connection until it is consumed")
    }

    /// The name of the pool this connection belongs to.
    pub fn pool_name(&self) -> &str {
        &self.shared.name
    }

    /// A number identifying this connection within its pool, as logs show it.
    pub fn id(&self) -> u64 {
        self.conn().id
    }

    /// Takes the connection out of the pool: the pool forgets it (counted as closed with reason
    /// `detached`) and may open a replacement; the caller owns and closes it.
    pub fn detach(mut self) -> M::Connection {
        let conn = self.conn.take().expect("a guard holds its connection until it is consumed");
        let now = self.shared.came_back(conn.id, self.acquired_at);
        self.shared.forget(conn.id, now);
        conn.raw
    }

    /// Closes the connection instead of returning it to the pool (counted as `detached`), for a
    /// connection the caller knows is in a bad state.
    pub fn discard(mut self) {
        self.discard_as(CloseReason::Detached);
    }

    pub(crate) fn discard_as(&mut self, reason: CloseReason) {
        if let Some(conn) = self.conn.take() {
            let now = self.shared.came_back(conn.id, self.acquired_at);
            self.shared.retire(conn, reason, Held::User, now);
        }
    }
}

impl<M: Manager> Deref for PooledConnection<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.conn().raw
    }
}

impl<M: Manager> DerefMut for PooledConnection<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.conn.as_mut().expect("a guard holds its connection until it is consumed").raw
    }
}

impl<M: Manager> Drop for PooledConnection<M> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.shared.release(conn, self.acquired_at);
        }
    }
}

impl<M: Manager> fmt::Debug for PooledConnection<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConnection")
            .field("pool", &self.shared.name)
            .field("id", &self.conn.as_ref().map(|c| c.id))
            .finish_non_exhaustive()
    }
}
