//! Bounded server streams: what every streaming RPC (event watches, agent streams) uses to
//! hand messages to a consumer that may not keep up.
//!
//! The producer gets a [`BoundedSender`]; tonic gets the matching [`BoundedStream`]. A message
//! waits at most the grace period for room in the stream's bounded queue; when it does not get
//! it, the consumer is too slow: the producer stops (and releases whatever it held), and the
//! stream ends with `RESOURCE_EXHAUSTED` (`SLOW_CONSUMER`) ahead of anything still queued, so
//! a slow reader is not handed the backlog first. Whatever was queued is dropped; the consumer
//! resumes from its own last position (a watch's resume token, an agent's unacknowledged
//! batches).

use std::collections::HashMap;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::services::support::ERROR_DOMAIN;

/// A bounded stream's two ends: `capacity` messages may wait, each at most `grace`.
/// `resume` tells a consumer that was too slow how to carry on (it ends the status message).
pub fn bounded<T>(
    capacity: usize,
    grace: Duration,
    what: &'static str,
    resume: &'static str,
) -> (BoundedSender<T>, BoundedStream<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    let (abort, aborted) = oneshot::channel();
    (
        BoundedSender {
            tx,
            abort: Mutex::new(Some(abort)),
            too_slow: AtomicBool::new(false),
            grace,
            what,
            resume,
        },
        BoundedStream {
            rx,
            aborted: Some(aborted),
        },
    )
}

/// The producer's end of a bounded stream.
pub struct BoundedSender<T> {
    tx: mpsc::Sender<T>,
    abort: Mutex<Option<oneshot::Sender<Status>>>,
    too_slow: AtomicBool,
    grace: Duration,
    what: &'static str,
    resume: &'static str,
}

impl<T> BoundedSender<T> {
    /// Queues one message. `false`: stop producing — the consumer left, the stream was ended
    /// with an error, or the consumer was too slow (the stream is then ended for it).
    pub async fn send(&self, message: T) -> bool {
        if self.too_slow.load(Ordering::Relaxed) {
            return false;
        }
        match self.tx.send_timeout(message, self.grace).await {
            Ok(()) => true,
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                self.too_slow.store(true, Ordering::Relaxed);
                metrics::counter!("zen_stream_consumers_too_slow_total", "stream" => self.what)
                    .increment(1);
                tracing::info!(
                    stream = self.what,
                    grace_ms = self.grace.as_millis() as u64,
                    "closing a consumer that does not keep up"
                );
                self.end(too_slow(self.what, self.grace, self.resume));
                false
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
        }
    }

    /// Ends the stream with `status`, ahead of anything still queued (once; later calls are
    /// ignored).
    pub fn end(&self, status: Status) {
        let abort = self
            .abort
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(abort) = abort {
            let _ = abort.send(status);
        }
    }

    /// Completes when the consumer has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Whether this consumer was closed as too slow.
    pub fn was_too_slow(&self) -> bool {
        self.too_slow.load(Ordering::Relaxed)
    }
}

/// The consumer's end, handed to tonic as the response stream.
pub struct BoundedStream<T> {
    rx: mpsc::Receiver<T>,
    aborted: Option<oneshot::Receiver<Status>>,
}

impl<T> Stream for BoundedStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(aborted) = self.aborted.as_mut() {
            match Pin::new(aborted).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.aborted = None;
                    self.rx.close();
                    // Drop what was queued: the consumer resumes from its own position.
                    while self.rx.try_recv().is_ok() {}
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => self.aborted = None,
                Poll::Pending => {}
            }
        }
        self.rx.poll_recv(cx).map(|m| m.map(Ok))
    }
}

/// The status a too-slow consumer's stream ends with.
pub fn too_slow(what: &str, grace: Duration, resume: &str) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "{what} too slow: its queue stayed full for {} ms; {resume}",
            grace.as_millis()
        ),
        ErrorDetails::with_error_info(
            "SLOW_CONSUMER",
            ERROR_DOMAIN,
            HashMap::from([("grace_ms".to_owned(), grace.as_millis().to_string())]),
        ),
    )
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_consumer_that_keeps_up_gets_everything_in_order() {
        let (tx, mut rx) = bounded::<u32>(2, Duration::from_millis(50), "test", "resume");
        let producer = tokio::spawn(async move {
            for n in 0..100 {
                assert!(tx.send(n).await);
            }
        });
        for n in 0..100 {
            assert_eq!(rx.next().await.unwrap().unwrap(), n);
        }
        producer.await.unwrap();
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn a_consumer_that_stops_reading_is_ended_ahead_of_its_backlog() {
        let (tx, mut rx) = bounded::<u32>(2, Duration::from_millis(50), "watcher", "resume.");
        assert!(tx.send(1).await);
        assert!(tx.send(2).await);
        let started = std::time::Instant::now();
        assert!(!tx.send(3).await, "the third message finds the queue full");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(tx.was_too_slow());
        // Later sends give up at once.
        let started = std::time::Instant::now();
        assert!(!tx.send(4).await);
        assert!(started.elapsed() < Duration::from_millis(50));
        let status = rx.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().starts_with("watcher too slow"),
            "{status:?}"
        );
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "SLOW_CONSUMER"
        );
        assert!(rx.next().await.is_none(), "the backlog was dropped");
    }
}
