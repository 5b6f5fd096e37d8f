//! [`Lsn`], a WAL position, and [`CausalToken`], the opt-in read-your-writes token.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnection;

use crate::error::TokenError;

/// A position in PostgreSQL's write-ahead log, written like `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// How many bytes of WAL lie between `earlier` and `self` (zero if `earlier` is ahead), as
    /// `pg_wal_lsn_diff` counts them.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        let invalid = || TokenError::Parse(s.to_owned());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(invalid)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| invalid())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| invalid())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// Read-your-writes: the primary's WAL position taken after a write. A read that carries it
/// ([`PgCluster::session_read_only_after`](crate::PgCluster::session_read_only_after)) goes only
/// to a replica that has replayed that far, else to the primary.
///
/// Its text form (`Display`, `FromStr`) is the WAL position, so it can travel between requests
/// (a cookie, a header).
///
/// # Examples
///
/// ```no_run
/// use pool_postgres::{CausalToken, PgCluster};
///
/// # async fn demo(cluster: PgCluster) -> Result<(), Box<dyn std::error::Error>> {
/// let mut primary = cluster.session().await?;
/// sqlx::query("INSERT INTO notes (body) VALUES ('hi')").execute(&mut *primary).await?;
/// let token = CausalToken::after_write(&mut primary).await?;
/// drop(primary);
///
/// let mut read = cluster.session_read_only_after(&token).await?;
/// let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM notes").fetch_one(&mut *read).await?;
/// # let _ = n;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CausalToken {
    lsn: Lsn,
}

impl CausalToken {
    /// Takes a token on a primary connection, after the write (after its transaction committed).
    ///
    /// It reads `pg_current_wal_insert_lsn()`, not `pg_current_wal_lsn()`: with
    /// `synchronous_commit = off` the commit record may not be written out yet, and the insert
    /// position is the one certain to cover it.
    ///
    /// # Errors
    ///
    /// [`TokenError::Query`] when the query fails, for instance on a replica.
    pub async fn after_write(conn: &mut PgConnection) -> Result<CausalToken, TokenError> {
        let (text,): (String,) = sqlx::query_as("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(conn)
            .await
            .map_err(TokenError::Query)?;
        Ok(CausalToken { lsn: text.parse()? })
    }

    /// A token for a WAL position known otherwise.
    pub fn from_lsn(lsn: Lsn) -> Self {
        CausalToken { lsn }
    }

    /// The WAL position a replica must have replayed.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }
}

impl fmt::Display for CausalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.lsn.fmt(f)
    }
}

impl FromStr for CausalToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        s.parse().map(CausalToken::from_lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::{CausalToken, Lsn};

    #[test]
    fn lsns_round_trip_and_order() {
        let cases =
            [("0/0", 0u64), ("16/B374D848", 0x16_B374_D848), ("FFFFFFFF/FFFFFFFF", u64::MAX)];
        for (text, value) in cases {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        assert!("1/0".parse::<Lsn>().unwrap() > "0/FFFFFFFF".parse::<Lsn>().unwrap());
        assert_eq!(Lsn(10).bytes_since(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_since(Lsn(10)), 0);
    }

    #[test]
    fn bad_tokens_are_errors() {
        for bad in ["", "16", "16/", "/1", "x/1", "1/2/3", "100000000/0"] {
            assert!(bad.parse::<CausalToken>().is_err(), "{bad:?}");
        }
    }
}
