//! What other replicas change: one dedicated connection `LISTEN`s on [`CHANNEL`], on which every
//! write transaction of every replica that changes a cached answer notifies as it commits, the
//! payload naming the changes ([`Change::encode_all`]); each notification's changes go to the
//! subscriber (the engine's cache). This store's own commits deliver theirs at once, so a writer
//! sees its own change without waiting for the round trip.
//!
//! The feed is only trusted while the listening connection is up: when it is lost,
//! [`Changes::listening`] is false (callers then read through their caches) and a background task
//! reconnects with back-off; once it listens again [`Change::All`] is delivered before the feed is
//! trusted again, so everything cached before the gap is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Socket};

use super::tls::Tls;
use crate::change::{Change, ChangeSink};
use crate::error::{Error, MetaError, Result};

/// The notification channel of committed writes (the payload names the changes, one per line).
pub const CHANNEL: &str = "berth_changes";

/// Longest payload sent (PostgreSQL's limit is 8000 bytes); more changes are coarsened.
pub(crate) const MAX_PAYLOAD: usize = 7900;

/// Longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where changes go, and whether the feed can be trusted.
#[derive(Default)]
pub(crate) struct Changes {
    sink: parking_lot::RwLock<Option<ChangeSink>>,
    listening: AtomicBool,
}

impl Changes {
    /// Whether every change of other replicas reaches the sink (the listener is up).
    pub(crate) fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Deliver changes to the subscriber.
    pub(crate) fn deliver(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        if let Some(sink) = self.sink.read().as_ref() {
            sink(changes);
        }
    }

    /// Deliver to `sink` from now on.
    pub(crate) fn subscribe(&self, sink: ChangeSink) {
        *self.sink.write() = Some(sink);
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
                Some(Ok(AsyncMessage::Notification(n))) => seen.deliver(&Change::decode_all(n.payload())),
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
    // Whatever committed while nobody listened is behind this: caches of before it go.
    changes.deliver(&[Change::All]);
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
    fn changes_reach_the_subscriber_and_the_feed_is_trusted_only_while_listening() {
        let c = Changes::default();
        assert!(!c.listening());
        c.deliver(&[Change::All]);
        let got = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let g = got.clone();
        c.subscribe(Arc::new(move |ch: &[Change]| g.lock().extend_from_slice(ch)));
        c.deliver(&[]);
        c.deliver(&Change::decode_all("r a\nlibrary/alpine"));
        let a: crate::name::RepoName = "a".parse().unwrap();
        let alpine: crate::name::RepoName = "library/alpine".parse().unwrap();
        assert_eq!(*got.lock(), [Change::Repo(a), Change::Repo(alpine)]);
        c.set_listening(true);
        assert!(c.listening());
        c.set_listening(false);
        assert!(!c.listening());
    }
}
