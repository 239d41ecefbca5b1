//! The receiving end of a pub/sub channel, common to both backends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::Stream;

/// Runs when a subscription is dropped (after its receiver is gone), so the
/// backend can release the channel when nobody in the process listens.
pub(crate) type OnDrop = Box<dyn FnOnce() + Send + Sync>;

/// Messages published on one channel, as a [`Stream`] of `Vec<u8>` (or one
/// at a time with [`recv`](Self::recv)). Dropping it unsubscribes.
///
/// **Delivery:** at most once. Every message published after `subscribe`
/// returned reaches the subscription, in the order each publisher sent
/// them, unless it lags (below) or, on Redis, the connection is down (the
/// subscription resumes after the reconnect; messages published meanwhile
/// are lost). A message published shortly *before* `subscribe` returned may
/// also arrive. Consumers that must not miss state changes treat messages
/// as hints and read the state itself from the store.
///
/// **Bound:** each channel buffers at most `channel_capacity` messages
/// ([`MemoryOptions`](crate::MemoryOptions) /
/// [`RedisOptions`](crate::RedisOptions), default 1024) for its slowest
/// subscriber in the process. A subscriber that falls further behind skips
/// the oldest messages rather than growing memory: they are counted in
/// [`missed`](Self::missed), so a consumer that needs every message (e.g. a
/// WebSocket watcher) can notice and resynchronise from the store.
///
/// The stream ends (`None`) only when the cache it came from is dropped.
pub struct Subscription {
    channel: String,
    stream: Option<BroadcastStream<Vec<u8>>>,
    missed: u64,
    on_drop: Option<OnDrop>,
}

impl Subscription {
    pub(crate) fn new(
        channel: &str,
        receiver: broadcast::Receiver<Vec<u8>>,
        on_drop: Option<OnDrop>,
    ) -> Subscription {
        Subscription {
            channel: channel.to_owned(),
            stream: Some(BroadcastStream::new(receiver)),
            missed: 0,
            on_drop,
        }
    }

    /// The channel, as passed to `subscribe` (without the key prefix).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// How many messages this subscriber skipped because it lagged more than
    /// the channel capacity behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The next message; `None` once the cache is gone.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Subscription {
    type Item = Vec<u8>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match Pin::new(&mut *stream).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => return Poll::Ready(Some(message)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(skipped)))) => {
                    this.missed = this.missed.saturating_add(skipped);
                    tracing::warn!(
                        channel = %this.channel,
                        skipped,
                        "cache subscriber lagged behind; messages skipped"
                    );
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Release the receiver first so the backend sees it gone.
        self.stream = None;
        if let Some(on_drop) = self.on_drop.take() {
            on_drop();
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}
