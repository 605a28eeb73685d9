//! Request bodies: the limits every body is read under (longest pause, least rate, longest total
//! time), and draining what a handler left unread, so that an answer given before the body was
//! read (401, 404, 413, 416, 429…) reaches a client that writes its whole body before it reads.
//!
//! Every request's body is wrapped in a [`ReqBody`]. When a handler drops it before its end, the
//! body comes back to the dispatcher ([`Unread`]), which reads and discards the rest within
//! [`BodyLimits::drain_bytes`] and [`BodyLimits::drain_time`] before the answer goes out. Closing
//! the connection with the client's bytes still unread would make the kernel reset it, and the
//! client would see a broken pipe instead of the answer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use crate::config::BodyLimits;

/// A request body that goes back to the dispatcher when a handler drops it unfinished.
pub struct ReqBody {
    inner: Option<Incoming>,
    back: Option<oneshot::Sender<Unread>>,
    polled: bool,
}

/// A body a handler did not read to its end.
pub struct Unread {
    body: Incoming,
    /// Whether anything read from it: hyper sends `100 Continue` on the first read, so a
    /// client waiting for one has sent nothing while it was never read.
    polled: bool,
}

impl ReqBody {
    /// Wrap `body`; the receiver gets it back if it is dropped before its end. A request
    /// without a body (most of them: `GET`, `HEAD`) gets no receiver, and costs nothing more.
    pub fn new(body: Incoming) -> (ReqBody, Option<oneshot::Receiver<Unread>>) {
        let (back, rx) = if body.is_end_stream() {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        (
            ReqBody {
                inner: Some(body),
                back,
                polled: false,
            },
            rx,
        )
    }

    /// Do not hand the body back: the client is too slow or broke off, so draining it would
    /// only wait for it. The connection is closed after the answer instead.
    pub fn abandon(&mut self) {
        self.back = None;
    }
}

impl Drop for ReqBody {
    fn drop(&mut self) {
        if let (Some(tx), Some(body)) = (self.back.take(), self.inner.take())
            && !body.is_end_stream()
        {
            let _ = tx.send(Unread {
                body,
                polled: self.polled,
            });
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.polled = true;
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Why a request body ended early.
#[derive(Debug)]
pub enum BodyError {
    /// The connection failed.
    Read(hyper::Error),
    /// Nothing arrived for this long (`http.timeouts.body`).
    Idle(Duration),
    /// Less than the least rate arrived over a period.
    Slow {
        /// Bytes that arrived in the period.
        got: u64,
        /// The period.
        window: Duration,
        /// The least rate, bytes per second.
        min_rate: u64,
    },
    /// The body took longer than `http.timeouts.bodytotal`.
    TooLong(Duration),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Read(e) => write!(f, "{e}"),
            BodyError::Idle(d) => write!(
                f,
                "no data for {}s (http.timeouts.body); send the rest in a new request from the session's offset",
                d.as_secs()
            ),
            BodyError::Slow { got, window, min_rate } => write!(
                f,
                "the body arrived too slowly: {got} bytes in {}s, below the least rate of {min_rate} bytes/s (http.limits.bodyminrate)",
                window.as_secs()
            ),
            BodyError::TooLong(d) => write!(
                f,
                "the body took longer than {}s (http.timeouts.bodytotal); send the rest in a new request from the session's offset",
                d.as_secs()
            ),
        }
    }
}

/// The rate and time checks of one body, fed with each frame.
struct Pace {
    limits: BodyLimits,
    started: Instant,
    window_start: Instant,
    window_bytes: u64,
}

impl Pace {
    fn new(limits: BodyLimits) -> Pace {
        let now = Instant::now();
        Pace {
            limits,
            started: now,
            window_start: now,
            window_bytes: 0,
        }
    }

    /// How long to wait for the next frame.
    fn wait(&self) -> Duration {
        let idle = self.limits.window;
        match self.limits.total {
            Some(t) => idle.min(t.saturating_sub(self.started.elapsed())),
            None => idle,
        }
    }

    /// Nothing came within [`Pace::wait`].
    fn timed_out(&self) -> BodyError {
        match self.limits.total {
            Some(t) if self.started.elapsed() >= t => BodyError::TooLong(t),
            _ => BodyError::Idle(self.limits.window),
        }
    }

    /// `n` bytes arrived now.
    fn arrived(&mut self, n: usize) -> Result<(), BodyError> {
        let now = Instant::now();
        if let Some(t) = self.limits.total
            && now.duration_since(self.started) > t
        {
            return Err(BodyError::TooLong(t));
        }
        self.window_bytes += n as u64;
        let elapsed = now.duration_since(self.window_start);
        if self.limits.min_rate > 0 && elapsed >= self.limits.window {
            let need = (self.limits.min_rate as f64 * elapsed.as_secs_f64()) as u64;
            if self.window_bytes < need {
                return Err(BodyError::Slow {
                    got: self.window_bytes,
                    window: elapsed,
                    min_rate: self.limits.min_rate,
                });
            }
            self.window_start = now;
            self.window_bytes = 0;
        }
        Ok(())
    }
}

/// The body's data frames, ending with an error when it pauses longer than the window, brings
/// less than the least rate over a window, or takes longer than the total time. `seen` is
/// called with each frame's length as it arrives. A body cut this way is abandoned (not
/// drained).
pub fn guarded(
    body: ReqBody,
    limits: BodyLimits,
    seen: impl Fn(usize) + Send + 'static,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
    struct State<F> {
        body: ReqBody,
        pace: Pace,
        seen: F,
    }
    let start = State {
        body,
        pace: Pace::new(limits),
        seen,
    };
    futures_util::stream::unfold(Some(start), |state| async move {
        let mut st = state?;
        loop {
            let cut = match tokio::time::timeout(st.pace.wait(), st.body.frame()).await {
                Ok(None) => return None,
                Ok(Some(Err(e))) => BodyError::Read(e),
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    (st.seen)(data.len());
                    match st.pace.arrived(data.len()) {
                        Ok(()) => return Some((Ok(data), Some(st))),
                        Err(e) => e,
                    }
                }
                Err(_) => st.pace.timed_out(),
            };
            st.body.abandon();
            return Some((Err(cut), None));
        }
    })
}

/// What became of an unread body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Nothing was left unread.
    Nothing,
    /// Read to its end: the connection can stay open.
    Done,
    /// Left as it was (too large, too slow, broken, or a client that waits for `100 Continue`):
    /// close the connection after the answer.
    Given,
}

/// Read and discard what a handler left of a request body, within `limits`. A body never read
/// of a request that asked for `100 Continue` (`expects_continue`) is left alone: its client
/// has not sent it and stops when it sees the answer.
pub async fn drain(unread: Option<Unread>, limits: &BodyLimits, expects_continue: bool) -> Drained {
    let Some(Unread { mut body, polled }) = unread else {
        return Drained::Nothing;
    };
    if limits.drain_bytes == 0 || (!polled && expects_continue) {
        return Drained::Given;
    }
    let declared = body.size_hint().exact();
    if declared.is_some_and(|n| n > limits.drain_bytes) {
        return Drained::Given;
    }
    let deadline = tokio::time::Instant::now() + limits.drain_time;
    let mut read = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return Drained::Done,
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > limits.drain_bytes {
                    return Drained::Given;
                }
            }
            Ok(Some(Err(_))) | Err(_) => return Drained::Given,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(min_rate: u64, window_ms: u64, total_ms: Option<u64>) -> BodyLimits {
        BodyLimits {
            min_rate,
            window: Duration::from_millis(window_ms),
            total: total_ms.map(Duration::from_millis),
            ..BodyLimits::default()
        }
    }

    #[test]
    fn a_steady_body_passes_and_a_drip_is_cut_after_one_window() {
        let mut p = Pace::new(limits(1000, 50, None));
        for _ in 0..5 {
            p.arrived(100).unwrap();
        }
        std::thread::sleep(Duration::from_millis(60));
        // 500 bytes in 60 ms is over 1000 bytes/s.
        p.arrived(100).unwrap();
        // A new window: one byte in it is too little once the window is over.
        std::thread::sleep(Duration::from_millis(60));
        let e = p.arrived(1).unwrap_err();
        assert!(
            matches!(
                e,
                BodyError::Slow {
                    got: 1,
                    min_rate: 1000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("http.limits.bodyminrate"));
    }

    #[test]
    fn no_minimum_rate_means_only_pauses_count() {
        let mut p = Pace::new(limits(0, 10, None));
        std::thread::sleep(Duration::from_millis(20));
        p.arrived(1).unwrap();
        assert!(matches!(p.timed_out(), BodyError::Idle(_)));
    }

    #[test]
    fn the_total_time_is_enforced_and_bounds_the_wait() {
        let mut p = Pace::new(limits(0, 10_000, Some(30)));
        assert!(p.wait() <= Duration::from_millis(30));
        p.arrived(10).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(p.wait(), Duration::ZERO);
        assert!(matches!(p.timed_out(), BodyError::TooLong(_)));
        let e = p.arrived(10).unwrap_err();
        assert!(e.to_string().contains("http.timeouts.bodytotal"), "{e}");
    }
}
