//! The change token of a shared database: one dedicated connection `LISTEN`s on [`CHANNEL`],
//! on which every write transaction of every replica notifies as it commits, and each
//! notification bumps an in-process counter. This store's own commits bump it too, at once, so a
//! writer sees its own change without waiting for the round trip.
//!
//! The token is only trusted while the listening connection is up: when it is lost,
//! [`Changes::token`] answers `None` (callers then read through their caches) and a background
//! task reconnects with back-off; once it listens again the counter is bumped before the token is
//! offered again, so everything cached before the gap is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Socket};

use super::tls::Tls;
use crate::error::{Error, MetaError, Result};

/// The notification channel of committed writes (the payload names the repository).
pub const CHANNEL: &str = "berth_changes";

/// Longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The counter behind the change token, and whether it can be trusted.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    counter: AtomicU64,
    listening: AtomicBool,
}

impl Changes {
    /// The token, while the listener is up.
    pub(crate) fn token(&self) -> Option<u64> {
        if self.listening.load(Ordering::Acquire) {
            Some(self.counter.load(Ordering::Acquire))
        } else {
            None
        }
    }

    /// Count one change.
    pub(crate) fn bump(&self) {
        self.counter.fetch_add(1, Ordering::AcqRel);
    }

    fn set_listening(&self, up: bool) {
        self.listening.store(up, Ordering::Release);
    }
}

/// One listening session: its client (which keeps the connection open) and the task driving
/// the connection, which ends when the connection is lost.
struct Session {
    _client: Client,
    driver: JoinHandle<()>,
}

/// Drive the listening connection: count its notifications until it is lost.
fn drive<S>(mut conn: Connection<Socket, S>, seen: Arc<Changes>) -> JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => seen.bump(),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "lost the connection that listens for metadata changes; caches are bypassed until it is back");
                    break;
                }
                None => break,
            }
        }
        seen.set_listening(false);
    })
}

async fn listen(
    config: &tokio_postgres::Config,
    tls: &Tls,
    timeout: Duration,
    changes: &Arc<Changes>,
) -> Result<Session> {
    let late = || Error::Meta(MetaError::Unavailable("no answer from PostgreSQL in time".into()));
    let (client, driver) = match tls {
        Tls::Off => {
            let (client, conn) = tokio::time::timeout(timeout, config.connect(NoTls))
                .await
                .map_err(|_| late())??;
            (client, drive(conn, changes.clone()))
        }
        Tls::On(connector) => {
            let (client, conn) = tokio::time::timeout(timeout, config.connect(connector.clone()))
                .await
                .map_err(|_| late())??;
            (client, drive(conn, changes.clone()))
        }
    };
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        driver.abort();
        return Err(e.into());
    }
    // Whatever committed while nobody listened is behind this bump: caches of before it go.
    changes.bump();
    changes.set_listening(true);
    Ok(Session {
        _client: client,
        driver,
    })
}

/// Start listening (failing when the first connection fails) and keep listening in the
/// background; the task ends when it is aborted.
pub(crate) async fn start(
    config: tokio_postgres::Config,
    tls: Tls,
    timeout: Duration,
    changes: Arc<Changes>,
) -> Result<JoinHandle<()>> {
    let first = listen(&config, &tls, timeout, &changes).await?;
    Ok(tokio::spawn(async move {
        let mut session = first;
        loop {
            let _ = (&mut session.driver).await;
            changes.set_listening(false);
            let mut backoff = Duration::from_millis(50);
            session = loop {
                match listen(&config, &tls, timeout, &changes).await {
                    Ok(s) => {
                        tracing::info!("listening for metadata changes again");
                        break s;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, retry_in = ?backoff, "cannot listen for metadata changes yet");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_token_while_not_listening_and_a_new_one_after() {
        let c = Changes::default();
        assert_eq!(c.token(), None);
        c.bump();
        c.set_listening(true);
        let t = c.token().unwrap();
        c.bump();
        assert_ne!(c.token(), Some(t));
        c.set_listening(false);
        assert_eq!(c.token(), None);
    }
}
