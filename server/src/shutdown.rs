//! Shutdown: one [`Trigger`] fired once (by a signal, or by a test), any number of
//! [`Shutdown`] handles that the listeners and association tasks await.

use std::future::Future;

use tokio::sync::watch;

/// Fires the shutdown. Dropping it fires it too, so a listener never outlives its owner.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Awaited by whoever must stop when the server shuts down. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new trigger and its first handle.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.fire();
    }
}

impl Shutdown {
    /// Resolves once shutdown has been requested (at once if it already was).
    pub async fn requested(&mut self) {
        // An error means the trigger is gone, which also means shut down.
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}

/// Installs SIGINT and SIGTERM handlers now (so failures surface at start) and returns a
/// future that resolves when either arrives.
#[cfg(unix)]
pub fn signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

/// Returns a future that resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!(signal = "ctrl-c", "shutting down");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handles_see_the_trigger() {
        let (trigger, mut a) = channel();
        let mut b = a.clone();
        assert!(!a.is_requested());
        trigger.fire();
        a.requested().await;
        b.requested().await;
        assert!(b.is_requested());
    }

    #[tokio::test]
    async fn dropping_the_trigger_shuts_down() {
        let (trigger, mut a) = channel();
        drop(trigger);
        a.requested().await;
        assert!(a.is_requested());
    }
}
