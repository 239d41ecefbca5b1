//! The replica's drain signal. On SIGTERM the listeners stop accepting and in-flight calls
//! finish, but long-lived streams (event watches, agent sessions) would hold the shutdown
//! until the grace period cuts them off mid-message. They watch this signal instead and end at
//! once with an answer that says "reconnect": a watcher resumes from its last resume token on
//! another replica, an agent gets its last acks and a goodbye and resends what was not
//! acknowledged there.

use tokio::sync::watch;

/// Completes every [`Drain::started`] once the replica begins to drain.
#[derive(Clone, Debug)]
pub struct Drain(watch::Receiver<bool>);

impl Drain {
    pub fn new(signal: watch::Receiver<bool>) -> Self {
        Drain(signal)
    }

    /// A signal that never fires (a server that is never drained, e.g. in unit tests).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Kept alive so that `started` waits forever rather than seeing a closed channel.
        std::mem::forget(tx);
        Drain(rx)
    }

    /// Completes when the replica starts draining (at once if it already has).
    pub async fn started(&self) {
        let mut signal = self.0.clone();
        if signal.wait_for(|draining| *draining).await.is_err() {
            // The sender is gone: the server was dropped without draining; nothing to wait for.
            std::future::pending::<()>().await;
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::never()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn started_completes_when_draining_begins_and_not_before() {
        let (tx, rx) = watch::channel(false);
        let drain = Drain::new(rx);
        let early = tokio::time::timeout(Duration::from_millis(50), drain.started()).await;
        assert!(early.is_err(), "completed before the drain began");
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), drain.started())
            .await
            .expect("completes once draining");
        // A stream opened after the drain began ends at once too.
        tokio::time::timeout(Duration::from_secs(1), drain.clone().started())
            .await
            .expect("completes at once when already draining");
    }

    #[tokio::test]
    async fn never_never_completes() {
        let drain = Drain::never();
        let waited = tokio::time::timeout(Duration::from_millis(50), drain.started()).await;
        assert!(waited.is_err());
    }
}
