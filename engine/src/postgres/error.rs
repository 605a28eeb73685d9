//! The driver's and the pool's errors as the engine's: a server that cannot be reached (or is
//! shutting down, or has no connection free) is [`MetaError::Unavailable`], so the HTTP layer
//! can answer 503 and a client can retry; anything the server refused is
//! [`MetaError::Database`] with its message.

use std::error::Error as _;

use tokio_postgres::error::SqlState;

use crate::error::{Error, MetaError};

/// The error and its causes, joined.
pub(crate) use crate::error::error_chain as chain;

/// Whether a server answer means "not reachable now" rather than "refused".
fn unavailable_code(code: &SqlState) -> bool {
    // Class 08: connection exceptions; 57P01-57P03: shutting down, crashed, starting up;
    // 53300: too many connections.
    code.code().starts_with("08")
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::TOO_MANY_CONNECTIONS
}

/// The engine's error for a driver error.
pub(crate) fn from_pg(e: &tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let msg = match db.detail() {
            Some(d) => format!("{} ({}): {d}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        };
        if unavailable_code(db.code()) {
            return Error::Meta(MetaError::Unavailable(msg));
        }
        return Error::Meta(MetaError::Database(msg));
    }
    let lost = e.is_closed()
        || e.source().is_some_and(|c| c.downcast_ref::<std::io::Error>().is_some())
        || e.to_string() == "timeout waiting for server";
    if lost {
        Error::Meta(MetaError::Unavailable(chain(e)))
    } else {
        Error::Meta(MetaError::Database(chain(e)))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        from_pg(&e)
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match e {
            PoolError::Backend(e) => from_pg(&e),
            PoolError::Timeout(t) => Error::Meta(MetaError::Unavailable(format!(
                "no database connection could be had in time ({t:?}); database.pool.maxopen may be too small, or the server is slow or down"
            ))),
            PoolError::Closed => Error::Meta(MetaError::Unavailable("the connection pool is closed".into())),
            other => Error::Meta(MetaError::Unavailable(chain(&other))),
        }
    }
}
