//! Signals: SIGINT / SIGTERM stop the hub in order; SIGHUP reloads its configuration file.

use std::future::Future;

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers now and returns a future that resolves
/// on the first of them. Call it before starting anything: a signal that arrives before the
/// handlers exist would kill the process instead of stopping it in order.
pub(crate) fn stop_requested() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT received, stopping"),
                    _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
                },
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(%err, "cannot watch SIGINT/SIGTERM; only Ctrl-C stops edgewatch");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received, stopping");
    }
}

/// SIGHUP, from now on (installed at once, like [`stop_requested`]: before, a SIGHUP killed
/// the process). Each one yields `()`; never yields where it cannot be watched.
pub(crate) struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    pub(crate) fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = signal(SignalKind::hangup())
                .map_err(|err| tracing::warn!(%err, "cannot watch SIGHUP: no reload"))
                .ok();
            Self { signal }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next SIGHUP.
    pub(crate) async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}
