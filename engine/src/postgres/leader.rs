//! The one replica that collects garbage at a time: a session-level advisory lock, held on a
//! connection taken out of the pool for as long as the lease lives. Dropping the lease closes
//! that connection, and PostgreSQL lets go of the lock with it — also when the replica dies, so
//! a lease is never left behind.

use super::PgStore;
use super::records::row;
use crate::error::Result;
use crate::store::GcLease;

/// The advisory lock key of garbage collection ("berth gc").
pub const GC_LOCK: i64 = 0x6265_7274_6867_6300;

/// What holds the lock: the connection, outside the pool.
struct Leader {
    _client: deadpool_postgres::ClientWrapper,
}

impl PgStore {
    pub(super) async fn gc_leader(&self) -> Result<Option<GcLease>> {
        let client = self.client().await?;
        let got: bool = row(&client, "SELECT pg_try_advisory_lock($1)", &[&GC_LOCK])
            .await?
            .is_some_and(|r| r.get(0));
        if !got {
            return Ok(None);
        }
        // Out of the pool, so that no other operation reuses the connection holding the lock
        // and the lock goes when the connection does.
        let client = deadpool_postgres::Object::take(client);
        Ok(Some(Box::new(Leader { _client: client })))
    }
}
