//! The one graceful-shutdown primitive: stop accepting, let connections finish until a deadline, then close.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Owned by whoever decides to shut down (usually `main` on SIGTERM).
pub struct Drain {
    watch: DrainWatch,
}

/// Handed to every listener and connection.
#[derive(Clone)]
pub struct DrainWatch {
    stop: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every tracked connection finished before the deadline.
    Clean,
    /// The deadline passed; this many connections were closed.
    Forced(usize),
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        Self {
            watch: DrainWatch {
                stop: CancellationToken::new(),
                force: CancellationToken::new(),
                tracker: TaskTracker::new(),
            },
        }
    }

    pub fn watch(&self) -> DrainWatch {
        self.watch.clone()
    }

    /// Stops accepting, waits up to `deadline` for tracked tasks, then tells the rest to close.
    pub async fn drain(self, deadline: Duration) -> DrainOutcome {
        let w = self.watch;
        w.stop.cancel();
        w.tracker.close();
        if tokio::time::timeout(deadline, w.tracker.wait())
            .await
            .is_ok()
        {
            return DrainOutcome::Clean;
        }
        let left = w.tracker.len();
        w.force.cancel();
        // Tasks observe `forced()` promptly; don't wait forever on one that does not.
        let _ = tokio::time::timeout(Duration::from_secs(1), w.tracker.wait()).await;
        DrainOutcome::Forced(left)
    }
}

impl DrainWatch {
    /// Resolves when listeners must stop accepting (and HBONE servers send GOAWAY).
    pub async fn stopping(&self) {
        self.stop.cancelled().await
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves when the drain deadline has passed and connections must close now.
    pub async fn forced(&self) {
        self.force.cancelled().await
    }

    /// Spawns a connection task the drain waits for; it is dropped when the deadline passes.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let force = self.force.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = force.cancelled() => {}
            }
        })
    }

    /// Number of tracked tasks still running.
    pub fn active(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clean_when_tasks_finish() {
        let d = Drain::new();
        let w = d.watch();
        w.spawn(async { tokio::time::sleep(Duration::from_millis(20)).await });
        assert_eq!(d.drain(Duration::from_secs(5)).await, DrainOutcome::Clean);
    }

    #[tokio::test]
    async fn forced_after_deadline() {
        let d = Drain::new();
        let w = d.watch();
        w.spawn(futures::future::pending());
        assert!(!w.is_stopping());
        assert_eq!(
            d.drain(Duration::from_millis(50)).await,
            DrainOutcome::Forced(1)
        );
        assert!(w.is_stopping());
        assert_eq!(w.active(), 0);
    }
}
