//! Stopping: a signal future for SIGTERM (what Kubernetes sends a pod) or
//! SIGINT (Ctrl-C), a [`Shutdown`] token many tasks can watch, and
//! [`drain`], which lets work in progress finish within a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal as unix_signal};
use tokio::sync::watch;

/// Resolves on the first SIGTERM or SIGINT this process receives after it
/// is first polled. Panics if the handlers cannot be installed (a process
/// without signal support at all).
pub async fn signal() {
    Shutdown::on_signal().triggered().await
}

/// A stop request that any number of tasks can wait for; clones share it.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A token nothing has triggered yet.
    pub fn new() -> Self {
        Self {
            tx: std::sync::Arc::new(watch::channel(false).0),
        }
    }

    /// A token triggered by the first SIGTERM or SIGINT. The handlers are
    /// installed before this returns, so a signal sent right after is seen.
    /// Needs a Tokio runtime.
    pub fn on_signal() -> Self {
        let shutdown = Self::new();
        let mut term = unix_signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        let mut int = unix_signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            }
            trigger.trigger();
        });
        shutdown
    }

    /// Requests the stop (again is a no-op).
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the stop is requested (at once if it already was).
    pub async fn triggered(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Lets `work` (what was in progress when the stop came) finish, for at
/// most `deadline`. `None` when the deadline passed first; `what` names the
/// work in the log line either way.
pub async fn drain<T>(what: &str, deadline: Duration, work: impl Future<Output = T>) -> Option<T> {
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(deadline, work).await {
        Ok(out) => {
            tracing::info!(what, elapsed_ms = started.elapsed().as_millis() as u64, "drained");
            Some(out)
        }
        Err(_) => {
            tracing::warn!(
                what,
                deadline_ms = deadline.as_millis() as u64,
                "not drained within the deadline"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trigger_reaches_every_clone_and_later_waiters() {
        let s = Shutdown::new();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.triggered().await }
        });
        assert!(!s.is_triggered());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "resolved before the trigger");
        s.clone().trigger();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(s.is_triggered());
        // A waiter that comes after the trigger resolves at once.
        tokio::time::timeout(Duration::from_secs(5), s.triggered())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn drain_returns_the_work_or_none_at_the_deadline() {
        let done = drain("quick", Duration::from_secs(30), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            7
        })
        .await;
        assert_eq!(done, Some(7));
        let started = std::time::Instant::now();
        let cut = drain("slow", Duration::from_millis(100), async {
            tokio::time::sleep(Duration::from_secs(600)).await;
            7
        })
        .await;
        assert_eq!(cut, None);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "waited for the work, not the deadline"
        );
    }
}
